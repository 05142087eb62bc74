"""Seeded random projections of per-example linear-layer weight gradients.

Two projectors share one contract (``output_dim``, ``layer_names``, ``project``, ``describe``):

* :class:`KroneckerProjector` (LoGra style): per layer ``P_in`` (r_in x in) and ``P_out`` (r_out x out);
  the feature block of a weight gradient ``G`` (out x in) is ``vec(P_out G P_inᵀ)`` (row-major).
* :class:`DenseProjector` (TRAK/LESS style JL on the concatenation of the row-major flattened per-layer
  gradients, layers in sorted-name order) as a subsampled randomized Hadamard transform per layer, so no
  k x D matrix exists: memory is O(k + block) per layer, not O(k·D).

Everything random depends only on ``(spec.seed, layer name, layer shape)``. Kronecker matrices are drawn
on CPU with a ``torch.Generator`` in float64 and then cast to float32 (float32 CPU sampling takes a
vectorised path whose bits depend on the CPU capability, float64 sampling does not); dense sample
indices are CPU integer draws and dense signs an integer hash. So every process, machine and device gets
bitwise-identical projections.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from operators.errors import ConfigError

#: Bump when the way matrices are drawn changes; it enters the fingerprint.
GENERATOR_VERSION = "torch-randn-f64-v1"
#: Dense (SRHT) projector version: sign hash, index draw and transform layout.
DENSE_GENERATOR_VERSION = "srht-hash32-v1"
#: Work space of the dense projector in float32 elements per chunk of examples (64 MiB).
BLOCK_ELEMS = 1 << 24
#: Default budget (bytes, int8) for caching per-layer signs on the device.
SIGN_CACHE_BYTES = 1 << 28
#: log2 of the Hadamard factor size used by walsh_hadamard (fixed: it sets the summation order).
HADAMARD_FACTOR_LOG2 = 5
_MASK32 = (1 << 32) - 1


class ProjectionSpec(BaseModel):
    """Which projection to use and its size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["kronecker", "dense"] = "kronecker"
    rank: int = Field(default=8, gt=0, description="Kronecker per-side rank (capped by layer dims).")
    dim: int = Field(default=1024, gt=0, description="Dense output dimension.")
    seed: int = Field(default=0, ge=0, description="Base seed; per-layer seeds derive from it.")


def layer_seed(seed: int, layer_name: str) -> int:
    """A 63-bit seed derived from ``(seed, layer_name)``, stable across processes and machines."""
    digest = hashlib.blake2b(f"{seed}:{layer_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1)


def _gaussian(rows: int, cols: int, seed: int, std: float) -> torch.Tensor:
    """N(0, std²) float32 matrix drawn on CPU in float64 (CPU-capability independent)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.randn(rows, cols, generator=gen, dtype=torch.float64) * std).to(torch.float32)


def _check_layers(layers: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """Validate ``name -> (in_features, out_features)`` and return it in sorted-name order."""
    if not layers:
        raise ConfigError("projection: `layers` is empty; select at least one linear layer")
    out: dict[str, tuple[int, int]] = {}
    for name in sorted(layers):
        shape = tuple(int(v) for v in layers[name])
        if len(shape) != 2 or min(shape) <= 0:
            raise ConfigError(
                f"projection: layer {name!r} needs (in_features, out_features) > 0, got {layers[name]!r}"
            )
        out[name] = (shape[0], shape[1])
    return out


def _fingerprint(spec: ProjectionSpec, layers: dict[str, tuple[int, int]], generator: str) -> str:
    payload = {
        "generator": generator,
        "spec": spec.model_dump(mode="json"),
        "layers": [[name, list(shape)] for name, shape in layers.items()],
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


class _ProjectorBase:
    """Shared bookkeeping: spec, sorted layers, device, fingerprint."""

    kind: str
    generator: str = GENERATOR_VERSION

    def __init__(
        self, spec: ProjectionSpec, layers: dict[str, tuple[int, int]], device: str | torch.device
    ) -> None:
        self.spec = spec
        self.layers = _check_layers(layers)
        self.device = torch.device(device)
        self.fingerprint = _fingerprint(spec, self.layers, self.generator)
        self._digest = hashlib.blake2b(digest_size=16)

    @property
    def layer_names(self) -> list[str]:
        """Layer names in feature order (sorted)."""
        return list(self.layers)

    @property
    def output_dim(self) -> int:
        raise NotImplementedError

    def _hash_matrix(self, mat: torch.Tensor) -> None:
        self._digest.update(mat.numpy().tobytes())

    def describe(self) -> dict[str, object]:
        """Provenance record: kind, size, seed, output_dim, layers and fingerprints."""
        size = {"rank": self.spec.rank} if self.spec.kind == "kronecker" else {"dim": self.spec.dim}
        return {
            "kind": self.spec.kind,
            **size,
            "seed": self.spec.seed,
            "output_dim": self.output_dim,
            "layers": self.layer_names,
            "generator": self.generator,
            "fingerprint": self.fingerprint,
            "matrix_digest": self.matrix_digest,
        }

    @property
    def matrix_digest(self) -> str:
        """blake2b of the generated matrices' bytes (detects RNG drift across workers)."""
        return self._digest.hexdigest()

    def _check_grads(self, grads: dict[str, torch.Tensor]) -> None:
        missing = [n for n in self.layers if n not in grads]
        if missing:
            raise ConfigError(f"projection: gradients missing for layers {missing}")
        for name, (d_in, d_out) in self.layers.items():
            if tuple(grads[name].shape[-2:]) != (d_out, d_in):
                raise ConfigError(
                    f"projection: gradient for layer {name!r} has shape {tuple(grads[name].shape)}, "
                    f"expected (B, {d_out}, {d_in})"
                )


class KroneckerProjector(_ProjectorBase):
    """Per-layer ``G -> P_out G P_inᵀ`` with Gaussian N(0, 1/r) factors (inner products unbiased)."""

    kind = "kronecker"

    def __init__(
        self, spec: ProjectionSpec, layers: dict[str, tuple[int, int]], device: str | torch.device = "cpu"
    ) -> None:
        super().__init__(spec, layers, device)
        self.p_in: dict[str, torch.Tensor] = {}
        self.p_out: dict[str, torch.Tensor] = {}
        self.layer_shapes: dict[str, tuple[int, int]] = {}
        self.layer_slices: dict[str, slice] = {}
        offset = 0
        for name, (d_in, d_out) in self.layers.items():
            r_in, r_out = min(spec.rank, d_in), min(spec.rank, d_out)
            base = layer_seed(spec.seed, name)
            p_in = _gaussian(r_in, d_in, base, 1.0 / math.sqrt(r_in))
            p_out = _gaussian(r_out, d_out, (base + 1) & ((1 << 63) - 1), 1.0 / math.sqrt(r_out))
            self._hash_matrix(p_in)
            self._hash_matrix(p_out)
            self.p_in[name] = p_in.to(self.device)
            self.p_out[name] = p_out.to(self.device)
            self.layer_shapes[name] = (r_out, r_in)
            self.layer_slices[name] = slice(offset, offset + r_out * r_in)
            offset += r_out * r_in
        self._output_dim = offset

    @property
    def output_dim(self) -> int:
        return self._output_dim

    def project_layer(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        """Feature block (B, r_out*r_in) of one layer's full per-example gradients (B, out, in)."""
        g = grad.to(self.device, torch.float32)
        blk = torch.einsum("ro,boi,si->brs", self.p_out[name], g, self.p_in[name])
        return blk.reshape(blk.shape[0], -1)

    def project(self, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        """Features (B, output_dim) float32 from full per-example gradients ``{name: (B, out, in)}``."""
        self._check_grads(grads)
        return torch.cat([self.project_layer(name, grads[name]) for name in self.layers], dim=1)


class DenseProjector(_ProjectorBase):
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
        step = max(1, BLOCK_ELEMS // n)
        out = []
        for start in range(0, flat.shape[0], step):
            g = flat[start:start + step].to(self.device, torch.float32) * signs
            if g.shape[1] < n:
                g = torch.nn.functional.pad(g, (0, n - g.shape[1]))
            out.append(walsh_hadamard(g).index_select(1, self.indices[name]) * scale)
        return torch.cat(out) if len(out) > 1 else out[0]

    def project(self, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        """Features (B, dim) float32 from full per-example gradients ``{name: (B, out, in)}``."""
        self._check_grads(grads)
        out = self.project_layer(self.layer_names[0], grads[self.layer_names[0]])
        for name in self.layer_names[1:]:
            out = out + self.project_layer(name, grads[name])
        return out


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


Projector = KroneckerProjector | DenseProjector


def build_projector(
    spec: ProjectionSpec, layers: dict[str, tuple[int, int]], device: str | torch.device = "cpu"
) -> Projector:
    """Build the projector named by ``spec.kind`` for ``layers`` (name -> (in_features, out_features))."""
    if spec.kind == "kronecker":
        return KroneckerProjector(spec, layers, device)
    return DenseProjector(spec, layers, device)
