"""How a trainer consumes a mixture: a deterministic blend of per-domain example streams.

Training on a mixture means, for every example slot, picking a domain and then that domain's next
example. Two choices make probe trainings of different mixtures comparable (common random numbers):

* the domain of each slot follows the mixture exactly, by the largest running deficit
  ``w_k·(i+1) − count_k`` (the greedy blend of Megatron-style blended datasets), so a domain's share
  over any prefix of the run is within one example of ``w_k`` and carries no sampling noise;
* each domain's example order comes from its own generator, seeded by ``(seed, domain name)`` and
  reshuffled at each pass over the pool, so the same seed feeds every mixture the same examples of a
  domain, in the same order.

Two close mixtures therefore train on nearly the same examples, and the difference of their measured
losses is far less noisy than either loss (see ``operators.mixture.decision``).
"""

from __future__ import annotations

import zlib

import numpy as np

from operators.errors import ConfigError

__all__ = ["blend_schedule", "DomainStream"]


def blend_schedule(probs: np.ndarray, slots: int) -> np.ndarray:
    """(slots,) domain index of each example slot, following ``probs`` by the largest running deficit."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 1 or p.size == 0 or not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ConfigError("blend_schedule: probs must be a non-empty vector of finite values >= 0, not all 0")
    if slots < 0:
        raise ConfigError(f"blend_schedule: slots must be >= 0, got {slots}")
    p = p / p.sum()
    counts = np.zeros(p.size, dtype=np.float64)
    out = np.empty(slots, dtype=np.int64)
    for i in range(slots):
        k = int(np.argmax(p * (i + 1) - counts))  # ties: the first domain
        out[i] = k
        counts[k] += 1.0
    return out


class DomainStream:
    """Example indices of one domain's pool: a seeded shuffle per pass, independent of other domains."""

    def __init__(self, pool_size: int, seed: int, domain: str) -> None:
        if pool_size < 1:
            raise ConfigError(f"domain {domain!r}: its pool is empty")
        self.pool_size = pool_size
        self.rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(domain.encode("utf-8"))])
        self.order = self.rng.permutation(pool_size)
        self.cursor = 0

    def next(self) -> int:
        if self.cursor >= self.pool_size:
            self.order, self.cursor = self.rng.permutation(self.pool_size), 0
        i = int(self.order[self.cursor])
        self.cursor += 1
        return i
