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

__all__ = ["domain_quotas", "domain_seed", "standardize", "selection_keys", "key_range", "key_bins",
           "threshold_bin"]

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


def domain_seed(seed: int, domain: str) -> int:
    """Stable 63-bit seed derived from (seed, domain name) — independent of Python's hash()."""
    digest = hashlib.sha256(f"{int(seed)}\x00{domain}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


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
