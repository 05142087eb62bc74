"""Exploration candidates: mixtures away from the first-order influence answer (pure arithmetic).

First-order influence ranks domains by the loss drop of the next small step, so every mixture derived
from it (β path, line points, the paper's solver) shares its ranking. When that ranking is wrong (an
under-learned domain keeps paying over a long stage while an easy one saturates), validation must see
mixtures with other rankings to be able to repair it. Three cheap families:

* :func:`dirichlet_around`: RegMix-style random mixtures Dirichlet(c·reference), c drawn per sample
  from ``concentrations`` × K, kept inside the bounds (seeded).
* :func:`heavy_mixture`: ``share`` on one domain, the rest split by the reference, inside the bounds
  (one per domain with any positive evidence, :func:`positive_evidence`).
* :func:`far_enough`: drop proposals within an L1 distance of mixtures already measured.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from operators.errors import ConfigError
from operators.mixture.regression import sample_dirichlet_mixtures
from operators.mixture.simplex import project_bounded_simplex


def dirichlet_around(reference: np.ndarray, n: int, seed: int, lower: np.ndarray, upper: np.ndarray,
                     concentrations: Sequence[float] = (0.5, 1.0, 2.0, 4.0)) -> np.ndarray:
    """(n, K) mixtures w ~ Dirichlet(c·K·reference), c drawn per sample from ``concentrations``.

    c = 1 with a uniform reference is the flat Dirichlet on the simplex; smaller c gives sparser, larger
    c closer mixtures. Draws outside [lower, upper] are rejected (ConfigError if the bounds reject
    nearly all). n = 0 gives an empty (0, K) array."""
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    if n == 0:
        return np.zeros((0, ref.size))
    c = np.asarray(concentrations, dtype=np.float64).reshape(-1)
    if c.size == 0 or np.any(c <= 0):
        raise ConfigError(f"exploration concentrations must be positive, got {c.tolist()}")
    return sample_dirichlet_mixtures(ref, n, seed, lower, upper, strengths=c * ref.size)


def heavy_mixture(reference: np.ndarray, k: int, share: float, lower: np.ndarray,
                  upper: np.ndarray) -> np.ndarray:
    """``share`` (capped by ``upper[k]``) on domain k, the rest in proportion to the reference, projected
    onto the bounded simplex."""
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    if not 0.0 < share < 1.0:
        raise ConfigError(f"heavy-mixture share must lie in (0, 1), got {share}")
    if not 0 <= k < ref.size:
        raise ConfigError(f"heavy-mixture domain index {k} outside 0..{ref.size - 1}")
    rest = ref.copy()
    rest[k] = 0.0
    if rest.sum() <= 0:
        rest = np.ones_like(ref)
        rest[k] = 0.0
    share = min(share, float(np.asarray(upper, dtype=np.float64)[k]))
    w = rest / rest.sum() * (1.0 - share)
    w[k] = share
    return project_bounded_simplex(w, np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64))


def positive_evidence(scores: np.ndarray, ci_upper: np.ndarray | None = None) -> np.ndarray:
    """(K,) bool: a positive score, or a confidence interval whose upper end is above 0."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    out = s > 0
    if ci_upper is not None:
        hi = np.asarray(ci_upper, dtype=np.float64).reshape(-1)
        if hi.size != s.size:
            raise ConfigError(f"score CI has {hi.size} entries for {s.size} domains")
        out |= hi > 0
    return out


def far_enough(W: np.ndarray, measured: np.ndarray, min_l1: float) -> np.ndarray:
    """Rows of W at L1 distance >= ``min_l1`` from every measured mixture and from each other (greedy, in
    order)."""
    W = np.atleast_2d(np.asarray(W, dtype=np.float64))
    kept: list[np.ndarray] = []
    seen = [np.asarray(m, dtype=np.float64) for m in np.atleast_2d(measured)] if np.size(measured) else []
    for w in W:
        if all(np.abs(w - m).sum() >= min_l1 for m in seen):
            kept.append(w)
            seen.append(w)
    return np.array(kept) if kept else np.zeros((0, W.shape[1]))
