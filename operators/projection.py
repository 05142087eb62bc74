"""Seeded random projections of per-example linear-layer weight gradients.

Two projectors share one contract (``output_dim``, ``layer_names``, ``project``, ``describe``):

* :class:`KroneckerProjector` (LoGra style): per layer ``P_in`` (r_in x in) and ``P_out`` (r_out x out);
  the feature block of a weight gradient ``G`` (out x in) is ``vec(P_out G P_inᵀ)`` (row-major).
* :class:`DenseProjector` (TRAK/LESS style): a Gaussian JL matrix applied to the concatenation of the
  row-major flattened per-layer gradients, layers in sorted-name order.

Matrices depend only on ``(spec.seed, layer name, layer shape)``. They are always drawn on CPU with a
``torch.Generator`` in float64 and then cast to float32: float32 CPU sampling takes a vectorised path
whose bits depend on the CPU capability (AVX2 vs scalar), float64 sampling does not. So every process,
machine and device gets bitwise-identical matrices.
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
#: Columns per independently seeded chunk of a dense block (fixed: it shapes the matrix).
DENSE_CHUNK_COLUMNS = 1 << 16


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


def _fingerprint(spec: ProjectionSpec, layers: dict[str, tuple[int, int]]) -> str:
    payload = {
        "generator": GENERATOR_VERSION,
        "spec": spec.model_dump(mode="json"),
        "layers": [[name, list(shape)] for name, shape in layers.items()],
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


class _ProjectorBase:
    """Shared bookkeeping: spec, sorted layers, device, fingerprint."""

    kind: str

    def __init__(
        self, spec: ProjectionSpec, layers: dict[str, tuple[int, int]], device: str | torch.device
    ) -> None:
        self.spec = spec
        self.layers = _check_layers(layers)
        self.device = torch.device(device)
        self.fingerprint = _fingerprint(spec, self.layers)
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
            "generator": GENERATOR_VERSION,
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

    def project_factors(self, name: str, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Flattened ``Σ_t (P_out δ_t)(P_in x_t)ᵀ`` from inputs x (B,T,in) and output grads δ (B,T,out)."""
        xt = x.to(self.device, torch.float32) @ self.p_in[name].T
        dt = delta.to(self.device, torch.float32) @ self.p_out[name].T
        blk = torch.einsum("bto,bti->boi", dt, xt)
        return blk.reshape(blk.shape[0], -1)


class DenseProjector(_ProjectorBase):
    """JL projection ``Σ_layers P_layer vec(G_layer)`` with N(0, 1/dim) entries."""

    kind = "dense"

    def __init__(
        self, spec: ProjectionSpec, layers: dict[str, tuple[int, int]], device: str | torch.device = "cpu"
    ) -> None:
        super().__init__(spec, layers, device)
        std = 1.0 / math.sqrt(spec.dim)
        self.blocks: dict[str, torch.Tensor] = {}
        for name, (d_in, d_out) in self.layers.items():
            n_cols = d_in * d_out
            chunks = []
            for j, start in enumerate(range(0, n_cols, DENSE_CHUNK_COLUMNS)):
                width = min(DENSE_CHUNK_COLUMNS, n_cols - start)
                chunk = _gaussian(spec.dim, width, layer_seed(spec.seed, f"{name}#{j}"), std)
                self._hash_matrix(chunk)
                chunks.append(chunk.to(self.device))
            self.blocks[name] = chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)

    @property
    def output_dim(self) -> int:
        return self.spec.dim

    def project_layer(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        """One layer's additive contribution (B, dim) from its per-example gradients (B, out, in)."""
        g = grad.to(self.device, torch.float32)
        return g.reshape(g.shape[0], -1) @ self.blocks[name].T

    def project(self, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        """Features (B, dim) float32 from full per-example gradients ``{name: (B, out, in)}``."""
        self._check_grads(grads)
        out = self.project_layer(self.layer_names[0], grads[self.layer_names[0]])
        for name in self.layer_names[1:]:
            out = out + self.project_layer(name, grads[name])
        return out


Projector = KroneckerProjector | DenseProjector


def build_projector(
    spec: ProjectionSpec, layers: dict[str, tuple[int, int]], device: str | torch.device = "cpu"
) -> Projector:
    """Build the projector named by ``spec.kind`` for ``layers`` (name -> (in_features, out_features))."""
    if spec.kind == "kronecker":
        return KroneckerProjector(spec, layers, device)
    return DenseProjector(spec, layers, device)
