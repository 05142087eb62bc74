"""Kronecker (LoGra-style) projection: per layer ``G -> vec(P_out G P_inᵀ)`` (row-major blocks).

``P_in`` (r_in x in) and ``P_out`` (r_out x out) are Gaussian N(0, 1/r), so inner products are unbiased.
They are drawn on CPU with a ``torch.Generator`` in float64 and then cast to float32 (float32 CPU
sampling takes a vectorised path whose bits depend on the CPU capability, float64 sampling does not).
From (input, output-grad) pairs the block is ``Σ_t (P_out δ_t)(P_in x_t)ᵀ``: the full gradient is never
formed, and the same projected tokens give the K-FAC factor sums.
"""

from __future__ import annotations

import math

import torch

from operators.features.projectors.base import (
    PROJECTORS,
    GradTransform,
    KfacSums,
    ProjectionSpec,
    Projector,
    layer_seed,
    ordered_sum,
)

#: Bump when the way matrices are drawn changes; it enters the fingerprint.
GENERATOR_VERSION = "torch-randn-f64-v1"


def _gaussian(rows: int, cols: int, seed: int, std: float) -> torch.Tensor:
    """N(0, std²) float32 matrix drawn on CPU in float64 (CPU-capability independent)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.randn(rows, cols, generator=gen, dtype=torch.float64) * std).to(torch.float32)


@PROJECTORS.register
class KroneckerProjector(Projector):
    """Per-layer ``G -> P_out G P_inᵀ``; features are the layers' blocks side by side."""

    kind = "kronecker"
    generator = GENERATOR_VERSION

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

    def size(self) -> dict[str, int]:
        return {"rank": self.spec.rank}

    def project_layer(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        """Feature block (B, r_out*r_in) of one layer's full per-example gradients (B, out, in)."""
        g = grad.to(self.device, torch.float32)
        blk = torch.einsum("ro,boi,si->brs", self.p_out[name], g, self.p_in[name])
        return blk.reshape(blk.shape[0], -1)

    def combine(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts, dim=1)

    def kfac_layout(self) -> dict[str, dict[str, int]]:
        return {name: {"start": sl.start, "stop": sl.stop, "r_out": self.layer_shapes[name][0],
                       "r_in": self.layer_shapes[name][1]} for name, sl in self.layer_slices.items()}

    def project_pairs(
        self,
        name: str,
        pairs: list[tuple[torch.Tensor, torch.Tensor]],
        tok_mask: torch.Tensor,
        transform: GradTransform | None = None,
        kfac: bool = False,
    ) -> tuple[torch.Tensor, KfacSums | None]:
        """Block ``Σ_t (P_out δ_t)(P_in x_t)ᵀ`` and, with ``kfac``, ``(Σ x̃x̃ᵀ, Σ δ̃δ̃ᵀ, tokens)`` over
        non-pad tokens; a ``transform`` needs the full gradient, so it takes the base class's path."""
        if transform is not None:
            return super().project_pairs(name, pairs, tok_mask, transform, kfac)
        # δ is masked after projection (B,T,r), x not at all: δ_t = 0 zeroes x_t's term
        projected = [(x.float() @ self.p_in[name].T, (d.float() @ self.p_out[name].T) * tok_mask)
                     for x, d in pairs]
        block = ordered_sum(torch.einsum("bto,bti->boi", dt, xt) for xt, dt in projected)
        sums = None
        if kfac:
            xt = torch.cat([(x * tok_mask).flatten(0, 1) for x, _ in projected])
            dt = torch.cat([d.flatten(0, 1) for _, d in projected])
            sums = (xt.T @ xt).cpu(), (dt.T @ dt).cpu(), round(float(tok_mask.sum())) * len(projected)
        return block.reshape(block.shape[0], -1), sums
