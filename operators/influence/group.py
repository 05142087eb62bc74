"""Group influence pieces (TiKMiX): target directions, per-example scores, normalisation, bootstrap CIs.

Conventions (docs/ALGORITHMS.md §3–4); the map-reduce that applies them is workflows/stages/aggregate.py:
* per-example score s_iv = φ_i · d_v with d_v = Ĥ⁻¹ t_v (the caller preconditions the target directions);
* GI[k, v] = token-weighted (or plain) mean of s_iv over domain k ("benefit": positive means training on domain k lowers target
  loss, since an SGD step along ḡ_k changes L_v by −η⟨∇L_v, ḡ_k⟩);
* a normalisation (``normalize_per_target``: default ``loss`` keeps every target's nats scale,
  ``zscore`` makes targets equal) before a weighted sum over targets;
* target directions are token-weighted (loss-aware, nats per target token): with n_i the example's
  token count, t_v = Σ_i n_i φ_i / Σ_i n_i when φ_i is the gradient of the example's *mean* token loss
  (``loss_reduction="mean"``) and t_v = Σ_i φ_i / Σ_i n_i when it is the gradient of the *summed* loss
  (``"sum"``); either way t_v is the gradient of the target set's mean per-token loss;
* bootstrap CIs are mergeable across shards: every example gets Poisson(1) weights for each replicate
  (drawn from a per-shard seed), each shard returns weighted per-domain sums (B, K, V) and weighted
  counts (B, K), and replicate b's GI is Σ_shards sums_b / Σ_shards counts_b (Poisson bootstrap).
All arithmetic is float64; everything here is pure numpy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from scipy import sparse
from scipy.stats import rankdata

from operators.errors import ConfigError

_BLOCK_ROWS = 65_536


def _poisson_table(bits: int = 16) -> np.ndarray:
    """Inverse CDF of Poisson(1) at the midpoints of 2**bits equal cells (uint8 lookup table)."""
    u = (np.arange(2**bits, dtype=np.float64) + 0.5) / 2**bits
    j = np.arange(32)
    cdf = np.cumsum(np.exp(-1.0) / np.cumprod(np.maximum(j, 1)).astype(np.float64))
    return np.searchsorted(cdf, u, side="right").astype(np.uint8)


_POISSON = _poisson_table()


def _codes(labels: np.ndarray | Sequence[str], order: Sequence[str], what: str) -> np.ndarray:
    """Map string labels to their index in `order`; ConfigError on labels not in `order`."""
    if len(set(order)) != len(order):
        raise ConfigError(f"{what} order has repeated names: {list(order)}")
    arr = np.asarray(labels).astype(str)
    names, inverse = np.unique(arr, return_inverse=True)
    index = {name: i for i, name in enumerate(order)}
    unknown = [str(n) for n in names if n not in index]
    if unknown:
        raise ConfigError(f"{what} labels not in the {what} order {list(order)}: {unknown[:10]}")
    lookup = np.array([index[str(n)] for n in names], dtype=np.int64)
    return lookup[inverse.reshape(-1)]


def _group_sums(values: np.ndarray, codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-group column sums (G, c) and counts (G,) of a 2-D array."""
    counts = np.bincount(codes, minlength=n_groups).astype(np.int64)
    sums = np.zeros((n_groups, values.shape[1]), dtype=np.float64)
    for start in range(0, values.shape[0], _BLOCK_ROWS):
        block = np.asarray(values[start : start + _BLOCK_ROWS], dtype=np.float64)
        rows = codes[start : start + _BLOCK_ROWS]
        indicator = sparse.csr_matrix(
            (np.ones(rows.size), (rows, np.arange(rows.size))), shape=(n_groups, rows.size)
        )
        sums += indicator @ block
    return sums, counts


def _require_nonempty(counts: np.ndarray, order: Sequence[str], what: str) -> None:
    empty = [order[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise ConfigError(f"{what} with no examples: {empty}")


def target_token_sums(
    features: np.ndarray, n_tokens: np.ndarray, target_names: np.ndarray | Sequence[str], order: list[str],
    loss_reduction: Literal["mean", "sum"] = "mean",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Additive pieces of token-weighted target directions: (Σ w_i φ_i (V, k), Σ n_i (V,), counts (V,)).

    w_i = n_i for mean-reduced gradients, 1 for summed ones (see the module docstring); the direction
    of target v is ``sums[v] / tokens[v]``.
    """
    features = np.asarray(features)
    n = np.asarray(n_tokens, dtype=np.float64).reshape(-1)
    if features.ndim != 2 or not len(target_names) == n.shape[0] == features.shape[0]:
        raise ConfigError(f"target features {features.shape}, {n.shape[0]} token counts and "
                          f"{len(target_names)} names do not match")
    if loss_reduction not in ("mean", "sum"):
        raise ConfigError(f"featurize.loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
    codes = _codes(target_names, order, "target")
    rows = features.astype(np.float64) * n[:, None] if loss_reduction == "mean" else features
    sums, counts = _group_sums(rows, codes, len(order))
    tokens = np.bincount(codes, weights=n, minlength=len(order)).astype(np.float64)
    return sums, tokens, counts


def token_weighted_means(sums: np.ndarray, tokens: np.ndarray, order: Sequence[str]) -> np.ndarray:
    """t_v = sums[v] / tokens[v]; ConfigError naming targets without tokens."""
    tokens = np.asarray(tokens, dtype=np.float64)
    _require_nonempty((tokens > 0).astype(np.int64), list(order), "target sets")
    return np.asarray(sums, dtype=np.float64) / tokens[:, None]


def per_example_scores(features: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """s_iv = φ_i · d_v for (m, k) features and (V, k) directions → (m, V), blockwise in float64."""
    features = np.asarray(features)
    directions = np.asarray(directions, dtype=np.float64)
    if features.ndim != 2 or directions.ndim != 2 or features.shape[1] != directions.shape[1]:
        raise ConfigError(
            f"features {features.shape} and directions {directions.shape} must share the feature dim"
        )
    out = np.empty((features.shape[0], directions.shape[0]), dtype=np.float64)
    for start in range(0, features.shape[0], _BLOCK_ROWS):
        block = np.asarray(features[start : start + _BLOCK_ROWS], dtype=np.float64)
        out[start : start + block.shape[0]] = block @ directions.T
    return out


def _zscore(gi: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Z-score along axis -2 (domains) for each target; (near-)constant columns → 0. The spread comes from
    ``reference`` when given (the unshrunk matrix: noise counts as spread)."""
    ref = gi if reference is None else reference
    mean = gi.mean(axis=-2, keepdims=True)
    centred = gi - mean
    std = np.sqrt(((ref - ref.mean(axis=-2, keepdims=True)) ** 2).mean(axis=-2, keepdims=True))
    scale = np.abs(ref).max(axis=-2, keepdims=True)
    flat = std <= 1e-12 * np.maximum(scale, np.finfo(np.float64).tiny)
    return np.where(flat, 0.0, centred / np.where(flat, 1.0, std))


Normalization = Literal["balanced", "loss", "zscore", "max", "none"]


def _loss_scale(gi: np.ndarray) -> np.ndarray:
    """One scale for all targets: sqrt of the mean over targets of the across-domain variance."""
    var = gi.var(axis=-2, keepdims=True).mean(axis=-1, keepdims=True)
    scale = np.sqrt(var)
    tiny = 1e-12 * np.maximum(np.abs(gi).max(axis=(-2, -1), keepdims=True), np.finfo(np.float64).tiny)
    return np.where(scale <= tiny, 1.0, scale)


def _target_scale(gi: np.ndarray) -> np.ndarray:
    """One scale per target: its across-domain std (1 for a flat target)."""
    scale = np.sqrt(gi.var(axis=-2, keepdims=True))
    tiny = 1e-12 * np.maximum(np.abs(gi).max(axis=(-2, -1), keepdims=True), np.finfo(np.float64).tiny)
    return np.where(scale <= tiny, 1.0, scale)


def normalize_per_target(gi: np.ndarray, method: Normalization = "balanced",
                         reference: np.ndarray | None = None) -> np.ndarray:
    """Put the (K, V) group-influence matrix (or a stack of them) on the solver's scale.

    * ``balanced`` (default): each target is divided by its OWN across-domain std, so ``targets[].weight``
      is honoured on each target's own scale: a target whose raw effects are large (a hard target, large
      gradients) cannot take the mixture from an equally weighted easy one. With one target it equals
      ``loss``.
    * ``loss``: every entry is divided by ONE scale shared by all targets, so each target
      keeps its weight in nats: a hard target (high per-token loss, large gradients) moves the
      mixture more than an easy one, exactly as it moves a trainer's token-weighted target loss.
    * ``zscore``: BIDS-style per-target z-scores across domains; every target counts the same
      whatever its loss scale (the default before ``loss``).
    * ``max``: TiKMiX Eq. 9, each target divided by its best domain's value (sign kept).
    * ``none``: raw values (nats of target loss per unit step; tiny, needs a small solver beta).

    ``reference`` (same shape): the matrix the scales are measured on, when ``gi`` is a shrunk version of
    it (operators/influence/shrinkage.py). Measuring the spread on the noisy matrix keeps noise from
    being blown up to unit spread: differences that shrinkage removed stay small on the solver scale.
    """
    gi = np.asarray(gi, dtype=np.float64)
    ref = gi if reference is None else np.asarray(reference, dtype=np.float64)
    if method == "none":
        return gi.copy()
    if method == "zscore":
        return _zscore(gi, ref)
    if method == "loss":
        return gi / _loss_scale(ref)
    if method == "balanced":
        return gi / _target_scale(ref)
    if method == "max":
        top = ref.max(axis=-2, keepdims=True)
        return gi / np.where(np.abs(top) < 1e-300, 1.0, np.abs(top))
    raise ConfigError(f"influence normalize must be one of balanced|loss|zscore|max|none, got {method!r}")


def _normalised_weights(weights: np.ndarray | Sequence[float], n_targets: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != n_targets:
        raise ConfigError(f"target weights: expected {n_targets} values, got {w.shape[0]}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ConfigError(f"target weights must be finite, non-negative and not all zero, got {w.tolist()}")
    return w / w.sum()


def combine_targets(gi_norm: np.ndarray, weights: np.ndarray | Sequence[float]) -> np.ndarray:
    """Domain scores (K,): Σ_v λ_v GĨ[k, v] with λ normalised to sum 1."""
    gi_norm = np.asarray(gi_norm, dtype=np.float64)
    return gi_norm @ _normalised_weights(weights, gi_norm.shape[-1])


def _check_boot(n_boot: int, confidence: float) -> None:
    if n_boot < 1:
        raise ConfigError(f"influence bootstrap count must be >= 1, got {n_boot}")
    if not 0 < confidence < 1:
        raise ConfigError(f"influence confidence must be in (0, 1), got {confidence}")


def bootstrap_intervals(
    boot_gi: np.ndarray,
    target_weights: np.ndarray | Sequence[float],
    confidence: float = 0.9,
    normalize: Normalization = "balanced",
    extra: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Percentile CIs from replicate group influence (B, K, V).

    Returns gi_low/gi_high (K, V), score_low/score_high (K,) and, when `extra` maps a replicate's RAW
    group-influence matrix (K, V) to a (K,) vector (e.g. the mixture it induces), extra_low/extra_high.
    """
    boot_gi = np.asarray(boot_gi, dtype=np.float64)
    _check_boot(boot_gi.shape[0], confidence)
    lam = _normalised_weights(target_weights, boot_gi.shape[2])
    boot_scores = normalize_per_target(boot_gi, normalize) @ lam
    q = [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100]
    gi_low, gi_high = np.percentile(boot_gi, q, axis=0)
    score_low, score_high = np.percentile(boot_scores, q, axis=0)
    out: dict[str, Any] = {
        "gi_low": gi_low,
        "gi_high": gi_high,
        "score_low": score_low,
        "score_high": score_high,
        "n_boot": int(boot_gi.shape[0]),
        "confidence": confidence,
    }
    if extra is not None:
        boot_extra = np.stack([np.asarray(extra(g), dtype=np.float64) for g in boot_gi])
        out["extra_low"], out["extra_high"] = np.percentile(boot_extra, q, axis=0)
    return out


def shard_seed(seed: int, shard_id: str) -> np.random.Generator:
    """Generator for one shard's bootstrap weights, from (seed, shard id) only."""
    digest = hashlib.sha256(f"{int(seed)}\x00{shard_id}".encode()).digest()
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int.from_bytes(digest[:8], "little")])


def poisson_weights(rng: np.random.Generator, rows: int, n_boot: int) -> np.ndarray:
    """(rows, n_boot) Poisson(1) bootstrap weights (uint8, 16-bit inverse-CDF lookup).

    Every row consumes the same number of raw 64-bit draws, so the weights of a row do not depend on
    how the caller splits a shard into batches.
    """
    words = -(-n_boot // 4)
    raw = rng.bit_generator.random_raw(size=(rows, words)).astype(np.uint64, copy=False)
    u16 = raw.view(np.uint16).reshape(rows, 4 * words)[:, :n_boot]
    return _POISSON[u16]


class BootstrapSums:
    """Poisson-bootstrap replicate sums (B, K, V) and weighted counts (B, K); shard-mergeable."""

    def __init__(self, n_boot: int, n_domains: int, n_targets: int) -> None:
        self.sums = np.zeros((n_boot, n_domains, n_targets), dtype=np.float64)
        self.counts = np.zeros((n_boot, n_domains), dtype=np.float64)

    def update(self, scores: np.ndarray, codes: np.ndarray, weights: np.ndarray,
               row_weight: np.ndarray | None = None) -> BootstrapSums:
        """Add rows: scores (m, V), domain codes (m,) in [0, K), weights (m, B) from :func:`poisson_weights`;
        ``row_weight`` (m,) weighs each row in sums and counts alike (token counts: token-weighted means)."""
        scores = np.asarray(scores, dtype=np.float64)
        w = np.asarray(weights, dtype=np.float64)
        if row_weight is not None:
            w = w * np.asarray(row_weight, dtype=np.float64)[:, None]
        for k in np.unique(codes):
            mask = codes == k
            wk = w[mask]
            self.sums[:, k] += wk.T @ scores[mask]
            self.counts[:, k] += wk.sum(axis=0)
        return self

    def merge(self, other: BootstrapSums) -> BootstrapSums:
        if other.sums.shape != self.sums.shape:
            raise ConfigError(f"cannot merge BootstrapSums of shapes {other.sums.shape} and {self.sums.shape}")
        self.sums += other.sums
        self.counts += other.counts
        return self

    def gi(self, fallback: np.ndarray) -> np.ndarray:
        """Replicate GI (B, K, V); a domain with zero weight in a replicate takes ``fallback`` (K, V)."""
        empty = self.counts <= 0
        safe = np.where(empty, 1.0, self.counts)
        return np.where(empty[..., None], np.asarray(fallback)[None], self.sums / safe[..., None])


def spearman(a: np.ndarray | Sequence[float], b: np.ndarray | Sequence[float]) -> float:
    """Spearman rank correlation (ties get average ranks); NaN when either input is constant."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape or a.size < 2:
        raise ConfigError(f"spearman needs two equal-length vectors of >= 2 values, got {a.size}, {b.size}")
    ra, rb = rankdata(a) - (a.size + 1) / 2, rankdata(b) - (b.size + 1) / 2
    denom = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")
