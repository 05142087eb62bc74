"""MATES selection inside per-domain quotas: quota apportionment and Gumbel-top-k sampling.

Scores are standardised per domain before the noise is added (``z = (s − mean_d) / std_d``; the
perturbed key is ``±z/τ + G``), so τ is in units of the domain's score spread: raw MATES scores
(loss changes, std ≈ 1e-3) would otherwise be swamped by the unit-scale Gumbel noise. Top-k of
perturbed keys decomposes over shards, so the distributed selection (workflows/jobs/mates_select.py)
histograms keys per shard, finds the bin holding each domain's quota-th key, and resolves that bin
exactly; :func:`selection_keys` and :func:`threshold_bin` are its pure pieces.
"""

from __future__ import annotations

import hashlib
import math
from fractions import Fraction

import numpy as np

from operators.errors import ConfigError

__all__ = ["domain_quotas", "gumbel_top_k", "select_per_domain", "domain_seed", "standardize",
           "selection_keys", "key_range", "key_histogram", "threshold_bin"]

KEY_BINS = 1 << 16
_GUMBEL_LO, _GUMBEL_HI = -4.0, 40.0  # numpy's Gumbel draws lie in about [-3.6, 36.7]


def _largest_remainder(total: int, shares: dict[str, Fraction]) -> dict[str, int]:
    """Apportion ``total`` by exact ``shares`` (positive); ties → larger share, then name."""
    denom = sum(shares.values())
    ideal = {d: total * s / denom for d, s in shares.items()}
    alloc = {d: math.floor(v) for d, v in ideal.items()}
    extra = total - sum(alloc.values())
    order = sorted(shares, key=lambda d: (-(ideal[d] - alloc[d]), -shares[d], d))
    for d in order[:extra]:
        alloc[d] += 1
    return alloc


def domain_quotas(weights: dict[str, float], budget: int, available: dict[str, int]) -> dict[str, int]:
    """Largest-remainder apportionment of ``budget`` by weight, capped at availability.

    Domains that would exceed their availability are fixed at it and the rest is re-apportioned
    over the remaining positive-weight domains. Returns a quota for every domain in ``available``;
    the quotas sum to ``min(budget, Σ available)``. Only if every positive-weight domain is full
    does the remainder go to zero-weight domains (in proportion to their availability).
    """
    if budget < 0:
        raise ConfigError(f"domain_quotas: budget must be >= 0, got {budget}")
    missing = sorted(set(weights) - set(available))
    if missing:
        raise ConfigError(f"domain_quotas: weights name domains missing from available: {missing}")
    for d, a in available.items():
        if int(a) != a or a < 0:
            raise ConfigError(f"domain_quotas: available[{d!r}] must be a non-negative integer, got {a}")
    for d, w in weights.items():
        if not math.isfinite(w) or w < 0:
            raise ConfigError(f"domain_quotas: weight of {d!r} must be finite and >= 0, got {w}")
    cap = {d: int(a) for d, a in available.items()}
    total = min(int(budget), sum(cap.values()))
    quotas = {d: 0 for d in sorted(cap)}
    fixed: dict[str, int] = {}
    while True:
        free = {
            d: Fraction(weights[d])
            for d in sorted(weights)
            if weights[d] > 0 and cap[d] > 0 and d not in fixed
        }
        remaining = total - sum(fixed.values())
        if not free or remaining <= 0:
            break
        alloc = _largest_remainder(remaining, free)
        over = {d for d, q in alloc.items() if q > cap[d]}
        if not over:
            fixed.update(alloc)
            break
        fixed.update({d: cap[d] for d in over})
    quotas.update(fixed)
    leftover = total - sum(quotas.values())
    if leftover > 0:  # all positive-weight domains are full
        spare = {d: Fraction(cap[d] - quotas[d]) for d in quotas if cap[d] > quotas[d]}
        for d, q in _largest_remainder(leftover, spare).items():
            quotas[d] += q
    return quotas


def gumbel_top_k(
    scores: np.ndarray, k: int, temperature: float, seed: int, higher_is_better: bool = True
) -> np.ndarray:
    """Indices of the top-k of ``±scores/τ + G``, G ~ Gumbel(0, 1), sorted by perturbed key.

    ``temperature == 0`` gives deterministic top-k of ``±scores`` (ties → lower index). Scores are
    used as given: standardise them first (:func:`standardize`) so that τ has a scale.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or not np.all(np.isfinite(s)):
        raise ConfigError("gumbel_top_k: scores must be a finite 1-D array")
    if not 0 <= k <= s.shape[0]:
        raise ConfigError(f"gumbel_top_k: k must lie in [0, {s.shape[0]}], got {k}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ConfigError(f"gumbel_top_k: temperature must be finite and >= 0, got {temperature}")
    key = selection_keys(s, 0.0, 1.0, temperature, np.random.default_rng(seed), higher_is_better)
    order = np.lexsort((np.arange(s.shape[0]), -key))  # descending key, ties by index
    return order[:k].astype(np.int64)


def domain_seed(seed: int, domain: str) -> int:
    """Stable 63-bit seed derived from (seed, domain name) — independent of Python's hash()."""
    digest = hashlib.sha256(f"{int(seed)}\x00{domain}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def select_per_domain(
    ids: list[str],
    domains: list[str],
    scores: np.ndarray,
    quotas: dict[str, int],
    temperature: float,
    seed: int,
    higher_is_better: bool,
) -> dict[str, list[str]]:
    """Gumbel-top-k within each domain's quota on standardised scores; {domain: ids in key order}.

    In-memory reference of the distributed selection. Candidates of a domain are taken in input
    order, so results depend on that order and the seed only. A domain whose quota exceeds its
    candidate count is an error.
    """
    s = np.asarray(scores, dtype=np.float64)
    if not len(ids) == len(domains) == s.shape[0] or s.ndim != 1:
        raise ConfigError(
            f"select_per_domain: ids ({len(ids)}), domains ({len(domains)}) and scores "
            f"({s.shape}) must have the same length"
        )
    if len(set(ids)) != len(ids):
        raise ConfigError("select_per_domain: ids must be unique")
    members: dict[str, list[int]] = {}
    for i, d in enumerate(domains):
        members.setdefault(d, []).append(i)
    out: dict[str, list[str]] = {}
    for d in sorted(quotas):
        q = int(quotas[d])
        idx = np.asarray(members.get(d, []), dtype=np.int64)
        if q < 0 or q > idx.shape[0]:
            raise ConfigError(
                f"select_per_domain: quota of {d!r} ({q}) is negative or exceeds "
                f"its {idx.shape[0]} candidates"
            )
        mean, std = standardize(s[idx].size, s[idx].sum(), (s[idx] ** 2).sum())
        z = (s[idx] - mean) / std
        chosen = gumbel_top_k(z, q, temperature, domain_seed(seed, d), higher_is_better)
        out[d] = [ids[i] for i in idx[chosen]]
    return out


def standardize(count: int, total: float, total_sq: float) -> tuple[float, float]:
    """(mean, std) from a count, Σs and Σs² (population std; 1.0 when the scores are constant)."""
    if count <= 0:
        return 0.0, 1.0
    mean = total / count
    var = max(total_sq / count - mean * mean, 0.0)
    std = math.sqrt(var)
    return mean, (std if std > 1e-12 * max(abs(mean), 1e-300) and std > 0 else 1.0)


def selection_keys(scores: np.ndarray, mean: float, std: float, temperature: float,
                   rng: np.random.Generator, higher_is_better: bool) -> np.ndarray:
    """Perturbed keys ``±z/τ + G`` (``±z`` when τ = 0) with z = (s − mean)/std; larger key is better."""
    z = (np.asarray(scores, dtype=np.float64) - mean) / std
    key = z if higher_is_better else -z
    if temperature > 0:
        key = key / temperature + rng.gumbel(size=key.shape[0])
    return key


def key_range(z_min: float, z_max: float, temperature: float, higher_is_better: bool) -> tuple[float, float]:
    """Histogram range that holds (almost) every key of a domain with standardised scores in [z_min, z_max]."""
    lo, hi = (z_min, z_max) if higher_is_better else (-z_max, -z_min)
    if temperature > 0:
        lo, hi = lo / temperature + _GUMBEL_LO, hi / temperature + _GUMBEL_HI
    return float(lo), float(max(hi, lo + 1e-9))


def key_histogram(keys: np.ndarray, lo: float, hi: float, bins: int = KEY_BINS) -> np.ndarray:
    """Counts of keys per bin (keys outside [lo, hi] are clipped into the edge bins)."""
    return np.bincount(key_bins(keys, lo, hi, bins), minlength=bins).astype(np.int64)


def key_bins(keys: np.ndarray, lo: float, hi: float, bins: int = KEY_BINS) -> np.ndarray:
    """Bin index of each key (monotone in the key)."""
    scaled = (np.asarray(keys, dtype=np.float64) - lo) * (bins / (hi - lo))
    return np.clip(np.floor(scaled), 0, bins - 1).astype(np.int64)


def threshold_bin(hist: np.ndarray, quota: int) -> tuple[int, int]:
    """(b, above): every key in a bin > b is selected, ``quota − above`` are picked inside bin b.

    ``quota == 0`` gives ``(len(hist), 0)`` (nothing selected).
    """
    hist = np.asarray(hist, dtype=np.int64)
    if not 0 <= quota <= int(hist.sum()):
        raise ConfigError(f"threshold_bin: quota {quota} outside [0, {int(hist.sum())}]")
    if quota == 0:
        return len(hist), 0
    from_top = np.cumsum(hist[::-1])
    j = int(np.searchsorted(from_top, quota))  # first j with ≥ quota keys in the top j+1 bins
    b = len(hist) - 1 - j
    return b, int(from_top[j] - hist[b])
