"""MATES selection inside per-domain quotas: quota apportionment and Gumbel-top-k sampling."""

from __future__ import annotations

import hashlib
import math
from fractions import Fraction

import numpy as np

from operators.errors import ConfigError

__all__ = ["domain_quotas", "gumbel_top_k", "select_per_domain", "domain_seed"]


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

    ``temperature == 0`` gives deterministic top-k of ``±scores`` (ties → lower index).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or not np.all(np.isfinite(s)):
        raise ConfigError("gumbel_top_k: scores must be a finite 1-D array")
    if not 0 <= k <= s.shape[0]:
        raise ConfigError(f"gumbel_top_k: k must lie in [0, {s.shape[0]}], got {k}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ConfigError(f"gumbel_top_k: temperature must be finite and >= 0, got {temperature}")
    key = s if higher_is_better else -s
    if temperature > 0:
        key = key / temperature + np.random.default_rng(seed).gumbel(size=s.shape[0])
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
    """Gumbel-top-k within each domain's quota; returns {domain: selected ids in key order}.

    Candidates of a domain are taken in input order, so results depend on that order and the
    seed only. A domain whose quota exceeds its candidate count is an error.
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
        chosen = gumbel_top_k(s[idx], q, temperature, domain_seed(seed, d), higher_is_better)
        out[d] = [ids[i] for i in idx[chosen]]
    return out
