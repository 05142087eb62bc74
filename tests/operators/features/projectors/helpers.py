"""Shared inputs of the projector tests: layer shapes, random gradients, pairs with known cosines."""

from __future__ import annotations

import math

import torch

from operators.features.projectors import ProjectionSpec, build_projector

LAYERS = {"blk.0.a": (12, 20), "blk.0.b": (20, 5), "blk.1.c": (3, 16)}  # name -> (in, out)


def grads(layers: dict[str, tuple[int, int]], b: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(b, o, i, generator=g) for n, (i, o) in layers.items()}


def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.double(), b.double()
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def pairs_with_cosines(
    n: int, shape: tuple[int, int], seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n pairs of (out, in) matrices whose flattened cosines are exactly linspace(-0.9, 0.9)."""
    g = torch.Generator().manual_seed(seed)
    d = shape[0] * shape[1]
    c = torch.linspace(-0.9, 0.9, n, dtype=torch.float64)
    u = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(n, d, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    w = w - (w * u).sum(1, keepdim=True) * u
    w = w / w.norm(dim=1, keepdim=True)
    v = c[:, None] * u + torch.sqrt(1 - c**2)[:, None] * w
    return u.float().view(n, *shape), v.float().view(n, *shape), c


def cos_rmse_and_bound(spec: ProjectionSpec, n_pairs: int = 200) -> tuple[float, float]:
    """RMSE of projected cosines and the JL size sqrt(mean((1-c²)²))/sqrt(k) it should match."""
    u, v, c = pairs_with_cosines(n_pairs, (64, 64), seed=11)
    proj = build_projector(spec, {"w": (64, 64)})
    pc = cos(proj.project({"w": u}), proj.project({"w": v}))
    rmse = float(((pc - c) ** 2).mean().sqrt())
    bound = float(((1 - c**2) ** 2).mean().sqrt()) / math.sqrt(proj.output_dim)
    return rmse, bound


def token_pairs(
    layer: tuple[int, int], b: int, t: int, calls: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``calls`` (x (B,T,in), δ (B,T,out)) pairs, as hooks capture them for a layer called that often."""
    g = torch.Generator().manual_seed(seed)
    d_in, d_out = layer
    return [(torch.randn(b, t, d_in, generator=g), torch.randn(b, t, d_out, generator=g))
            for _ in range(calls)]


def right_padded_mask(lengths: list[int], t: int) -> torch.Tensor:
    """(B, T, 1) float mask of the first ``lengths[i]`` tokens of each row."""
    return (torch.arange(t)[None] < torch.tensor(lengths)[:, None]).float().unsqueeze(-1)
