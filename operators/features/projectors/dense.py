"""Dense JL projection (TRAK/LESS style) as a subsampled randomized Hadamard transform (SRHT).

The projection acts on the concatenation of the row-major flattened per-layer gradients, layers in
sorted-name order, without any k x D matrix: memory is O(k + block) per layer, not O(k·D). Sample
indices are seeded CPU integer draws and signs an integer hash, so every process, machine and device
gets bitwise-identical projections.
"""

from __future__ import annotations

import math

import torch

from operators.errors import ConfigError
from operators.features.projectors.base import (
    PROJECTORS,
    ProjectionSpec,
    Projector,
    layer_seed,
    ordered_sum,
    rows_per_block,
)

#: Dense (SRHT) projector version: sign hash, index draw and transform layout.
DENSE_GENERATOR_VERSION = "srht-hash32-v1"
#: Default budget (bytes, int8) for caching per-layer signs on the device.
SIGN_CACHE_BYTES = 1 << 28
#: log2 of the Hadamard factor size used by walsh_hadamard (fixed: it sets the summation order).
HADAMARD_FACTOR_LOG2 = 5
_MASK32 = (1 << 32) - 1


@PROJECTORS.register
class DenseProjector(Projector):
    """Dense JL without a k x D matrix: ``Σ_layers sqrt(n/k) · S_l H_n D_l pad(vec(G_l))`` (SRHT).

    Per layer ``D_l`` are ±1 signs from a 32-bit integer hash of ``(layer seed, coordinate)``,
    ``H_n`` is the orthonormal Walsh-Hadamard transform of size ``n = next_pow2(out*in)`` and
    ``S_l`` samples ``k`` coordinates with replacement (seeded CPU draw). Inner products are unbiased
    with the variance of a Gaussian JL map, ``(|a|²|b|² + <a,b>²)/k``. Memory is O(block): sample
    indices (k per layer), a bounded sign cache and ``BLOCK_ELEMS`` floats of work space; the hash
    and the transform are integer / fixed-order ops, identical on every process and device.
    """

    kind = "dense"
    generator = DENSE_GENERATOR_VERSION

    def __init__(
        self,
        spec: ProjectionSpec,
        layers: dict[str, tuple[int, int]],
        device: str | torch.device = "cpu",
        sign_cache_bytes: int = SIGN_CACHE_BYTES,
    ) -> None:
        super().__init__(spec, layers, device)
        self.indices: dict[str, torch.Tensor] = {}
        self.sizes: dict[str, int] = {}
        self._sign_seeds: dict[str, int] = {}
        self._signs: dict[str, torch.Tensor] = {}
        self._cache_left = int(sign_cache_bytes)
        for name, (d_in, d_out) in self.layers.items():
            n = 1 << max(0, (d_in * d_out - 1).bit_length())
            if n > 1 << 32:
                raise ConfigError(f"projection: layer {name!r} has {d_in * d_out} weights (> 2^32)")
            gen = torch.Generator(device="cpu").manual_seed(layer_seed(spec.seed, f"{name}#idx"))
            idx = torch.randint(0, n, (spec.dim,), generator=gen, dtype=torch.int64)
            self._sign_seeds[name] = layer_seed(spec.seed, f"{name}#sign")
            self._hash_matrix(idx)
            self._hash_matrix(_hash_signs(torch.arange(min(n, 1 << 16)), self._sign_seeds[name]))
            self.indices[name] = idx.to(self.device)
            self.sizes[name] = n

    @property
    def output_dim(self) -> int:
        return self.spec.dim

    def size(self) -> dict[str, int]:
        return {"dim": self.spec.dim}

    def signs(self, name: str) -> torch.Tensor:
        """±1 (int8) signs of the layer's ``out*in`` coordinates (cached while the budget lasts)."""
        cached = self._signs.get(name)
        if cached is not None:
            return cached
        d_in, d_out = self.layers[name]
        signs = _hash_signs(torch.arange(d_in * d_out, device=self.device), self._sign_seeds[name])
        if signs.numel() <= self._cache_left:
            self._cache_left -= signs.numel()
            self._signs[name] = signs
        return signs

    def project_layer(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        """One layer's additive contribution (B, dim) from its per-example gradients (B, out, in)."""
        n = self.sizes[name]
        flat = grad.reshape(grad.shape[0], -1)
        signs = self.signs(name)
        scale = math.sqrt(n / self.spec.dim)
        step = rows_per_block(n)
        out = []
        for start in range(0, flat.shape[0], step):
            g = flat[start:start + step].to(self.device, torch.float32) * signs
            if g.shape[1] < n:
                g = torch.nn.functional.pad(g, (0, n - g.shape[1]))
            out.append(walsh_hadamard(g).index_select(1, self.indices[name]) * scale)
        return torch.cat(out) if len(out) > 1 else out[0]

    def combine(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return ordered_sum(parts)


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """Integer hash of int64 values in [0, 2^32) (no overflow: products stay below 2^59)."""
    for _ in range(2):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    return (x >> 16) ^ x


def _hash_signs(coords: torch.Tensor, seed: int) -> torch.Tensor:
    """±1 int8 sign per coordinate from ``hash(hash(coord) ^ seed_lo) ^ seed_hi``."""
    lo, hi = seed & _MASK32, (seed >> 32) & _MASK32
    bits = _hash32(_hash32(_hash32(coords.to(torch.int64)) ^ lo) ^ hi) & 1
    return (1 - 2 * bits).to(torch.int8)


_HADAMARD: dict[tuple[int, str], torch.Tensor] = {}


def _hadamard_matrix(m: int, device: torch.device) -> torch.Tensor:
    key = (m, str(device))
    if key not in _HADAMARD:
        h = torch.ones(1, 1, dtype=torch.float64)
        while h.shape[0] < m:
            h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
        _HADAMARD[key] = (h / math.sqrt(m)).to(device, torch.float32)
    return _HADAMARD[key]


def walsh_hadamard(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal Walsh-Hadamard transform (Sylvester order) along dim 1 of (N, n), n = 2^p.

    ``H_n = H_m1 ⊗ ... ⊗ H_mq``: each step multiplies one axis of the (N, m1, ..., mq) view by a
    small ``H_m`` (one batched matmul), so the cost is about ``Σ m_i`` flops per element.
    """
    rows, n = x.shape
    p = n.bit_length() - 1
    if n != 1 << p:
        raise ConfigError(f"walsh_hadamard: length {n} is not a power of two")
    factors = [HADAMARD_FACTOR_LOG2] * (p // HADAMARD_FACTOR_LOG2)
    if p % HADAMARD_FACTOR_LOG2:  # the small factor first: a last GEMM with K=2 is very slow
        factors.insert(0, p % HADAMARD_FACTOR_LOG2)
    lead, rest = rows, n
    for log_m in factors:
        m = 1 << log_m
        h = _hadamard_matrix(m, x.device)
        rest //= m
        x = x.reshape(-1, m) @ h if rest == 1 else torch.matmul(h, x.reshape(lead, m, rest))
        lead *= m
    return x.reshape(rows, n)
