"""TiKMiX-M local search around TiKMiX-D's answer (docs/ALGORITHMS.md §7; the paper's Algorithm 1).

* :func:`perturbation_box`: per-domain interval [low·w_D, high·w_D] (paper: 0.5–2×) ∩ the problem bounds.
* :func:`latin_hypercube_mixtures`: Latin Hypercube samples of that box, normalised to Σ = 1, rejected
  when a coordinate leaves the box after normalisation (the paper keeps 254 of 256).
* :func:`covered_box`: the per-domain [min, max] of the labelled candidates: the only region where a
  regression fitted on them may be trusted.
* :func:`annealed_search`: Algorithm 1 — T rounds of Dirichlet(α_t·w_best) samples with α_t log-spaced
  from α_max down to α_min (as the paper writes it: tight around the start first, wider later), w_best ←
  mean of the top-k by ``score``. Samples outside the allowed box are rejected, so every mean of kept
  samples stays inside (the box and the simplex are convex). The best-scoring w_best of all rounds,
  the start included, is returned, so the answer never scores below the start.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from operators.errors import ConfigError

_TOL = 1e-12


def perturbation_box(center: np.ndarray, lower: np.ndarray, upper: np.ndarray, low: float = 0.5,
                     high: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """[max(low·c, lower), min(high·c, upper)] per domain; ConfigError if it cannot hold a mixture."""
    c = np.asarray(center, dtype=np.float64).reshape(-1)
    if not 0 < low <= 1 <= high:
        raise ConfigError(f"perturbation scales need 0 < low <= 1 <= high, got {low}, {high}")
    lo = np.maximum(low * c, np.asarray(lower, dtype=np.float64))
    hi = np.minimum(high * c, np.asarray(upper, dtype=np.float64))
    if np.any(lo > hi + _TOL) or lo.sum() > 1 + 1e-9 or hi.sum() < 1 - 1e-9:
        raise ConfigError(f"perturbation box around {c.round(4).tolist()} holds no mixture: "
                          f"lower={lo.round(4).tolist()}, upper={hi.round(4).tolist()}")
    return lo, np.maximum(hi, lo)


def in_box(W: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(n,) bool: rows of W inside [lo, hi] (with a 1e-12 tolerance)."""
    W = np.atleast_2d(W)
    return np.all((W >= lo - _TOL) & (W <= hi + _TOL), axis=1)


def latin_hypercube_mixtures(lo: np.ndarray, hi: np.ndarray, n: int, seed: int,
                             max_rounds: int = 50) -> np.ndarray:
    """n mixtures: LHS in the box, normalised to Σ = 1, kept only if still inside the box."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    if n < 1:
        raise ConfigError(f"number of candidate mixtures must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    kept: list[np.ndarray] = []
    have = drawn = 0
    for _ in range(max_rounds):
        m = max(2 * (n - have), 16)
        strata = np.stack([rng.permutation(m) for _ in range(lo.size)], axis=1)
        u = (strata + rng.random((m, lo.size))) / m  # one sample per stratum in every dimension
        x = lo + u * (hi - lo)
        w = x / x.sum(axis=1, keepdims=True)
        w = w[in_box(w, lo, hi)]
        drawn += m
        kept.append(w)
        have += w.shape[0]
        if have >= n:
            return np.concatenate(kept)[:n]
    raise ConfigError(f"perturbation box too tight: {have} of {drawn} Latin Hypercube draws stayed inside "
                      f"after normalisation, needed {n} (lower={lo.tolist()}, upper={hi.tolist()})")


def covered_box(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-domain [min, max] over the labelled mixtures."""
    W = np.atleast_2d(np.asarray(W, dtype=np.float64))
    return W.min(axis=0), W.max(axis=0)


def annealed_search(score: Callable[[np.ndarray], np.ndarray], start: np.ndarray, lo: np.ndarray,
                    hi: np.ndarray, iterations: int = 8, samples: int = 2048, alpha_max: float = 1000.0,
                    alpha_min: float = 30.0, top_k: int = 32, seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    """Algorithm 1 restricted to [lo, hi] (see module docstring) → (best mixture, per-round trace).

    ``score`` maps (n, K) mixtures to (n,) values to maximise (e.g. a lower confidence bound).
    """
    w_best = np.asarray(start, dtype=np.float64).reshape(-1)
    if not in_box(w_best, lo, hi)[0]:
        raise ConfigError("annealed_search: the start lies outside the allowed box")
    if iterations < 1 or samples < 1 or top_k < 1 or not 0 < alpha_min <= alpha_max:
        raise ConfigError("annealed_search: need iterations, samples, top_k >= 1 and 0 < alpha_min <= alpha_max")
    rng = np.random.default_rng(seed)
    best_w, best_s = w_best, float(score(w_best[None])[0])
    trace = [{"round": 0, "alpha": None, "kept": 1, "score": best_s}]
    for t, alpha in enumerate(np.geomspace(alpha_max, alpha_min, iterations), start=1):
        g = rng.standard_gamma(np.broadcast_to(alpha * w_best, (samples, w_best.size)))
        tot = g.sum(axis=1, keepdims=True)
        W = g[tot[:, 0] > 0] / tot[tot[:, 0] > 0]
        W = W[in_box(W, lo, hi)]
        if W.shape[0] == 0:
            trace.append({"round": t, "alpha": float(alpha), "kept": 0, "score": None})
            continue
        s = score(W)
        top = np.argsort(-s, kind="stable")[:top_k]
        w_best = W[top].mean(axis=0)
        w_best /= w_best.sum()
        s_best = float(score(w_best[None])[0])
        trace.append({"round": t, "alpha": float(alpha), "kept": int(W.shape[0]), "score": s_best})
        if s_best > best_s:
            best_w, best_s = w_best, s_best
    return best_w, trace


def label_noise(delta: np.ndarray) -> dict:
    """Noise of probe labels ``delta`` (n_mixtures, n_seeds) measured with seeds shared by all mixtures.

    ``seed_std``: pooled within-mixture std; ``interaction_std``: std of the mixture × seed residual, the
    part that does not cancel when mixtures are compared under the same seeds; ``label_noise_std`` =
    interaction_std / sqrt(n_seeds) is the noise of one label (a mean over seeds); ``snr`` = the std of
    the labels across mixtures over that noise (below ~1 the labels cannot rank the mixtures).
    """
    d = np.asarray(delta, dtype=np.float64)
    n, s = d.shape
    if s < 2:
        raise ConfigError("label_noise needs >= 2 seeds per mixture")
    within = d - d.mean(axis=1, keepdims=True)
    resid = within - d.mean(axis=0, keepdims=True) + d.mean()
    seed_std = float(np.sqrt((within**2).sum() / (n * (s - 1))))
    inter = float(np.sqrt((resid**2).sum() / max(1, (n - 1) * (s - 1))))
    label_std = float(d.mean(axis=1).std())
    noise = inter / np.sqrt(s)
    return {"seed_std": seed_std, "interaction_std": inter, "label_noise_std": float(noise),
            "label_std": label_std, "snr": float(label_std / noise) if noise > 0 else None}


def paired_gain_examples(reference: np.ndarray, candidate: np.ndarray, tokens: np.ndarray, n_boot: int = 2000,
                         seed: int = 0) -> dict:
    """Loss saved by ``candidate`` over ``reference`` with a standard error that also covers WHICH target
    examples were measured: inputs are (n_seeds, n_examples) changes of summed token loss per reference
    example (shared seeds), ``tokens`` (n_examples,) their token counts. Seeds and examples are both
    resampled (two-way bootstrap); ``se_seeds`` is the paired-seed error alone, for comparison."""
    diff = np.asarray(reference, dtype=np.float64) - np.asarray(candidate, dtype=np.float64)
    tok = np.asarray(tokens, dtype=np.float64)
    s, n = diff.shape
    if s < 2 or n < 2:
        raise ConfigError("paired_gain_examples needs >= 2 seeds and >= 2 examples")
    gain = float(diff.sum() / (s * tok.sum()))
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    for b in range(n_boot):
        si, ei = rng.integers(0, s, s), rng.integers(0, n, n)
        boot[b] = diff[np.ix_(si, ei)].sum() / (s * tok[ei].sum())
    se = float(boot.std(ddof=1))
    z = gain / se if se > 0 else (0.0 if gain == 0 else float(np.sign(gain) * np.inf))
    per_seed = diff.sum(axis=1) / tok.sum()
    return {"gain": gain, "se": se, "z": z, "n_seeds": int(s), "n_examples": int(n),
            "se_seeds": float(per_seed.std(ddof=1) / np.sqrt(s)), "ci90": np.quantile(boot, [0.05, 0.95]).tolist()}
