"""Tests for operators.features.projectors.kronecker: block formula, token pairs, K-FAC sums, JL error."""

from __future__ import annotations

import math

import torch

from operators.features.projectors import ProjectionSpec, build_projector
from operators.features.projectors.kronecker import KroneckerProjector
from tests.operators.features.projectors.helpers import (
    LAYERS,
    cos_rmse_and_bound,
    grads,
    pairs_with_cosines,
    right_padded_mask,
    token_pairs,
)


def test_shapes_and_formula() -> None:
    proj = KroneckerProjector(ProjectionSpec(kind="kronecker", rank=8, seed=1), LAYERS)
    assert proj.layer_names == sorted(LAYERS)
    assert proj.layer_shapes == {"blk.0.a": (8, 8), "blk.0.b": (5, 8), "blk.1.c": (8, 3)}
    assert proj.output_dim == 64 + 40 + 24
    assert proj.layer_slices["blk.0.b"] == slice(64, 104)
    g = grads(LAYERS, b=3, seed=0)
    feats = proj.project(g)
    assert feats.shape == (3, proj.output_dim) and feats.dtype == torch.float32
    for name, sl in proj.layer_slices.items():
        expect = (proj.p_out[name] @ g[name] @ proj.p_in[name].T).reshape(3, -1)
        torch.testing.assert_close(feats[:, sl], expect, rtol=1e-5, atol=1e-5)


def test_kfac_layout_names_each_block() -> None:
    proj = KroneckerProjector(ProjectionSpec(rank=8), LAYERS)
    assert proj.kfac_layout() == {
        "blk.0.a": {"start": 0, "stop": 64, "r_out": 8, "r_in": 8},
        "blk.0.b": {"start": 64, "stop": 104, "r_out": 5, "r_in": 8},
        "blk.1.c": {"start": 104, "stop": 128, "r_out": 8, "r_in": 3},
    }


def test_project_pairs_equals_projection_of_the_masked_gradient() -> None:
    """Σ_t (P_out δ_t)(P_in x_t)ᵀ over non-pad tokens and all calls == P_out (Σ_t δ_t x_tᵀ) P_inᵀ."""
    proj = KroneckerProjector(ProjectionSpec(rank=4, seed=2), LAYERS)
    name = "blk.0.a"
    pairs = token_pairs(LAYERS[name], b=4, t=6, calls=2, seed=5)
    mask = right_padded_mask([6, 2, 4, 5], 6)
    full = sum(torch.einsum("bto,bti->boi", d * mask, x) for x, d in pairs)
    block, sums = proj.project_pairs(name, pairs, mask)
    assert sums is None  # not asked for
    torch.testing.assert_close(block, proj.project_layer(name, full), rtol=1e-4, atol=1e-4)
    # with a transform the full gradient is needed: same answer as transforming the exact gradient
    transformed, _ = proj.project_pairs(name, pairs, mask, lambda _n, g: 2.0 * g)
    torch.testing.assert_close(transformed, proj.project_layer(name, 2.0 * full), rtol=1e-4, atol=1e-4)


def test_kfac_sums_cover_projected_non_pad_tokens() -> None:
    proj = KroneckerProjector(ProjectionSpec(rank=4, seed=2), LAYERS)
    name = "blk.0.b"
    pairs = token_pairs(LAYERS[name], b=3, t=5, calls=2, seed=8)
    lengths = [5, 1, 3]
    mask = right_padded_mask(lengths, 5)
    block, sums = proj.project_pairs(name, pairs, mask, kfac=True)
    assert sums is not None
    fwd, bwd, count = sums
    assert count == sum(lengths) * len(pairs)
    keep = mask[..., 0].bool()
    xt = torch.cat([(x @ proj.p_in[name].T)[keep] for x, _ in pairs])
    dt = torch.cat([(d @ proj.p_out[name].T)[keep] for _, d in pairs])
    torch.testing.assert_close(fwd, xt.T @ xt, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bwd, dt.T @ dt, rtol=1e-4, atol=1e-4)
    assert fwd.shape == (4, 4) and bwd.shape == (4, 4) and fwd.device.type == "cpu"
    plain, _ = proj.project_pairs(name, pairs, mask)
    assert torch.equal(block, plain)  # asking for sums leaves the features bit-identical


def test_error_shrinks_with_rank_and_is_unbiased() -> None:
    errs = {}
    for r in (4, 16):
        rmse, bound = cos_rmse_and_bound(ProjectionSpec(kind="kronecker", rank=r, seed=3))
        assert rmse < 2.0 * bound  # Kronecker is a bit worse than dense JL for the same k, not much
        errs[r] = rmse
    assert errs[16] < 0.5 * errs[4]  # k grows 16x -> error ~4x smaller
    # unbiased inner products: average over independent projector seeds converges to the exact value
    u, v, _ = pairs_with_cosines(4, (20, 30), seed=2)
    exact = (u * v).sum(dim=(1, 2)).double()
    ips = torch.stack([
        (lambda p: (p.project({"w": u}) * p.project({"w": v})).sum(1).double())(
            build_projector(ProjectionSpec(rank=4, seed=s), {"w": (30, 20)})
        )
        for s in range(400)
    ])
    se = ips.std(0) / math.sqrt(ips.shape[0])
    assert torch.all((ips.mean(0) - exact).abs() < 4 * se)
    assert float(ips.std(0).mean()) > 0.05  # single projections are genuinely noisy
