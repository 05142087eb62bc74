"""Tests for operators.features.projection: shapes, exact formulas, JL accuracy, cross-process determinism."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from operators.errors import ConfigError
from operators.features.projection import (
    DenseProjector,
    KroneckerProjector,
    ProjectionSpec,
    build_projector,
    layer_seed,
)

REPO = Path(__file__).resolve().parents[3]
LAYERS = {"blk.0.a": (12, 20), "blk.0.b": (20, 5), "blk.1.c": (3, 16)}  # name -> (in, out)


def _grads(layers: dict[str, tuple[int, int]], b: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(b, o, i, generator=g) for n, (i, o) in layers.items()}


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.double(), b.double()
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def _pairs(n: int, shape: tuple[int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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


def _cos_rmse_and_bound(spec: ProjectionSpec, n_pairs: int = 200) -> tuple[float, float]:
    u, v, c = _pairs(n_pairs, (64, 64), seed=11)
    proj = build_projector(spec, {"w": (64, 64)})
    pc = _cos(proj.project({"w": u}), proj.project({"w": v}))
    rmse = float(((pc - c) ** 2).mean().sqrt())
    bound = float(((1 - c**2) ** 2).mean().sqrt()) / math.sqrt(proj.output_dim)
    return rmse, bound


def test_spec_validation() -> None:
    assert ProjectionSpec().kind == "kronecker"
    with pytest.raises(ValidationError, match="rank"):
        ProjectionSpec(rank=0)
    with pytest.raises(ValidationError, match="dim"):
        ProjectionSpec(dim=-3)
    with pytest.raises(ValidationError):
        ProjectionSpec(kind="sparse")
    with pytest.raises(ValidationError):
        ProjectionSpec(bogus=1)
    with pytest.raises(ValidationError):
        ProjectionSpec().rank = 4  # frozen


def test_layer_seed_distinct() -> None:
    # cross-process stability is checked in test_bitwise_identical_across_processes
    assert layer_seed(3, "model.layers.0.q") != layer_seed(4, "model.layers.0.q")
    assert layer_seed(3, "model.layers.0.q") != layer_seed(3, "model.layers.0.k")
    assert 0 <= layer_seed(0, "x") < 2**63


def test_kronecker_shapes_and_formula() -> None:
    proj = KroneckerProjector(ProjectionSpec(kind="kronecker", rank=8, seed=1), LAYERS)
    assert proj.layer_names == sorted(LAYERS)
    assert proj.layer_shapes == {"blk.0.a": (8, 8), "blk.0.b": (5, 8), "blk.1.c": (8, 3)}
    assert proj.output_dim == 64 + 40 + 24
    assert proj.layer_slices["blk.0.b"] == slice(64, 104)
    grads = _grads(LAYERS, b=3, seed=0)
    feats = proj.project(grads)
    assert feats.shape == (3, proj.output_dim) and feats.dtype == torch.float32
    for name, sl in proj.layer_slices.items():
        expect = (proj.p_out[name] @ grads[name] @ proj.p_in[name].T).reshape(3, -1)
        torch.testing.assert_close(feats[:, sl], expect, rtol=1e-5, atol=1e-5)


def _dense_matrix(proj: DenseProjector, name: str) -> torch.Tensor:
    """The k x (out*in) matrix the projector applies to one layer (by projecting unit vectors)."""
    d_in, d_out = proj.layers[name]
    eye = torch.eye(d_in * d_out).reshape(-1, d_out, d_in)
    return proj.project_layer(name, eye).T


def test_dense_is_a_subsampled_randomized_hadamard_transform() -> None:
    proj = DenseProjector(ProjectionSpec(kind="dense", dim=16, seed=2), LAYERS)
    assert proj.output_dim == 16
    grads = _grads(LAYERS, b=4, seed=1)
    flat = torch.cat([grads[n].reshape(4, -1) for n in sorted(LAYERS)], dim=1)
    big_p = torch.cat([_dense_matrix(proj, n) for n in sorted(LAYERS)], dim=1)
    assert big_p.shape == (16, sum(i * o for i, o in LAYERS.values()))
    torch.testing.assert_close(proj.project(grads), flat @ big_p.T, rtol=1e-4, atol=1e-4)
    # explicit SRHT: sqrt(n/k) * rows idx of H_n diag(signs) on the zero-padded coordinates
    name = "blk.0.a"
    n = proj.sizes[name]
    assert n == 256  # next power of two of 20 * 12
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    h = h / math.sqrt(n)
    explicit = math.sqrt(n / 16) * h[proj.indices[name]][:, :240] * proj.signs(name).double()
    torch.testing.assert_close(_dense_matrix(proj, name).double(), explicit, rtol=1e-5, atol=1e-5)
    # chunking over examples (BLOCK_ELEMS) does not change the result
    import operators.features.projection as projection

    wide = {"w": (300, 300)}
    g = _grads(wide, b=5, seed=3)
    full = DenseProjector(ProjectionSpec(kind="dense", dim=8), wide).project(g)
    old = projection.BLOCK_ELEMS
    projection.BLOCK_ELEMS = 2 * 131072
    try:
        chunked = DenseProjector(ProjectionSpec(kind="dense", dim=8), wide).project(g)
    finally:
        projection.BLOCK_ELEMS = old
    torch.testing.assert_close(chunked, full)


def test_dense_memory_is_independent_of_k_times_d() -> None:
    """A 100M-weight layer set at k=4096 builds instantly: only indices and a bounded sign cache."""
    layers = {f"l{i}": (4096, 4096) for i in range(6)}  # 100M weights; a k x D matrix would be 1.6 TB
    proj = DenseProjector(ProjectionSpec(kind="dense", dim=4096), layers, sign_cache_bytes=1 << 20)
    held = sum(t.numel() * t.element_size() for t in proj.indices.values())
    assert held == 6 * 4096 * 8
    signs = proj.signs("l0")
    assert signs.numel() == 4096 * 4096 and not proj._signs  # over budget: regenerated, not cached
    assert abs(float(signs.float().mean())) < 0.002


def test_walsh_hadamard_matches_sylvester_matrix() -> None:
    from operators.features.projection import walsh_hadamard

    for n in (1, 2, 64, 2048):
        h = torch.ones(1, 1, dtype=torch.float64)
        while h.shape[0] < n:
            h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
        x = torch.randn(3, n, dtype=torch.float64)
        torch.testing.assert_close(walsh_hadamard(x.float()).double(), x @ h / math.sqrt(n),
                                   rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="power of two"):
        walsh_hadamard(torch.zeros(1, 12))


def test_bad_inputs_raise() -> None:
    with pytest.raises(ConfigError, match="empty"):
        build_projector(ProjectionSpec(), {})
    with pytest.raises(ConfigError, match="blk.0.a"):
        build_projector(ProjectionSpec(), {"blk.0.a": (0, 3)})
    proj = build_projector(ProjectionSpec(kind="dense", dim=8), LAYERS)
    grads = _grads(LAYERS, 2, 0)
    grads["blk.1.c"] = torch.zeros(2, 3, 16)
    with pytest.raises(ConfigError, match="blk.1.c"):
        proj.project(grads)


def test_describe_fingerprint() -> None:
    spec = ProjectionSpec(kind="kronecker", rank=4, seed=7)
    d = build_projector(spec, LAYERS).describe()
    assert d["kind"] == "kronecker" and d["rank"] == 4 and d["seed"] == 7
    assert d["layers"] == sorted(LAYERS) and d["output_dim"] == build_projector(spec, LAYERS).output_dim
    assert d["fingerprint"] == build_projector(spec, dict(reversed(list(LAYERS.items())))).describe()["fingerprint"]
    assert d["fingerprint"] != build_projector(spec.model_copy(update={"seed": 8}), LAYERS).describe()["fingerprint"]
    assert d["fingerprint"] != build_projector(spec, {**LAYERS, "blk.1.c": (3, 17)}).describe()["fingerprint"]
    json.dumps(d)  # manifest-serialisable
    dd = build_projector(ProjectionSpec(kind="dense", dim=32), LAYERS).describe()
    assert dd["dim"] == 32 and dd["output_dim"] == 32 and "rank" not in dd


@pytest.mark.parametrize("k", [256, 1024])
def test_dense_jl_error_matches_bound(k: int) -> None:
    rmse, bound = _cos_rmse_and_bound(ProjectionSpec(kind="dense", dim=k, seed=3))
    assert 0.5 * bound < rmse < 1.5 * bound


def test_dense_jl_error_on_low_rank_gradients() -> None:
    """Per-example gradients Σ_t δ_t x_tᵀ have low rank; the SRHT error must still follow the JL bound."""
    g = torch.Generator().manual_seed(4)
    n, k = 200, 512
    shared = torch.randn(2, 48, 1, generator=g), torch.randn(2, 1, 40, generator=g)
    own = [torch.randn(n, 48, 2, generator=g), torch.randn(n, 2, 40, generator=g)]
    grads = own[0] @ own[1] + (shared[0] @ shared[1]).sum(0)  # rank 3, cosines spread over (0, 1)
    a, b = grads[: n // 2], grads[n // 2:]
    c = _cos(a.flatten(1), b.flatten(1))
    bound = float(((1 - c**2) ** 2).mean().sqrt()) / math.sqrt(k)
    ratios = []
    for seed in range(8):  # the shared component correlates the pairs' errors: average projectors
        proj = build_projector(ProjectionSpec(kind="dense", dim=k, seed=seed), {"w": (40, 48)})
        pc = _cos(proj.project({"w": a}), proj.project({"w": b}))
        ratios.append(float(((pc - c) ** 2).mean().sqrt()) / bound)
    assert 0.75 < sum(ratios) / len(ratios) < 1.25


def test_kronecker_error_shrinks_with_rank_and_is_unbiased() -> None:
    errs = {}
    for r in (4, 16):
        rmse, bound = _cos_rmse_and_bound(ProjectionSpec(kind="kronecker", rank=r, seed=3))
        assert rmse < 2.0 * bound  # Kronecker is a bit worse than dense JL for the same k, not much
        errs[r] = rmse
    assert errs[16] < 0.5 * errs[4]  # k grows 16x -> error ~4x smaller
    # unbiased inner products: average over independent projector seeds converges to the exact value
    u, v, _ = _pairs(4, (20, 30), seed=2)
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


def _snapshot(seed: int) -> dict[str, dict]:
    """Features, matrix digest and matrices of both projector kinds for fixed float64-drawn gradients."""
    g = torch.Generator().manual_seed(99)
    grads = {n: torch.randn(3, o, i, generator=g, dtype=torch.float64).float() for n, (i, o) in LAYERS.items()}
    res: dict[str, dict] = {"seeds": {"q": layer_seed(3, "model.layers.0.q"), "k": layer_seed(3, "model.layers.0.k")}}
    for kind in ("kronecker", "dense"):
        p = build_projector(ProjectionSpec(kind=kind, rank=6, dim=64, seed=seed), LAYERS)
        mats = ({**p.indices, **{k + "/signs": p.signs(k) for k in p.layers}} if isinstance(p, DenseProjector)
                else {**p.p_in, **{k + "/out": v for k, v in p.p_out.items()}})
        res[kind] = {"features": p.project(grads), "digest": p.describe()["matrix_digest"], "mats": mats}
    return res


_CHILD = "import sys, torch; from tests.operators.features.test_projection import _snapshot; torch.save(_snapshot(5), sys.argv[1])"


def _child(out: Path, **env_extra: str) -> dict:
    """_snapshot(5) computed in a fresh interpreter (optionally with another CPU capability)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **env_extra}
    subprocess.run([sys.executable, "-c", _CHILD, str(out)], env=env, cwd=REPO, check=True)
    return torch.load(out)


def test_bitwise_identical_across_processes(tmp_path: Path) -> None:
    mine, reseeded = _snapshot(5), _snapshot(6)
    other = _child(tmp_path / "a.pt", PYTHONHASHSEED="12345")
    assert other["seeds"] == mine["seeds"]
    scalar = _child(tmp_path / "b.pt", ATEN_CPU_CAPABILITY="default")  # like a CPU without AVX2
    for kind in ("kronecker", "dense"):
        assert torch.equal(mine[kind]["features"], other[kind]["features"])
        assert mine[kind]["digest"] == other[kind]["digest"] == scalar[kind]["digest"]
        assert all(torch.equal(mine[kind]["mats"][k], scalar[kind]["mats"][k]) for k in mine[kind]["mats"])
        torch.testing.assert_close(mine[kind]["features"], scalar[kind]["features"], rtol=1e-5, atol=1e-5)
        assert reseeded[kind]["digest"] != mine[kind]["digest"]
        assert not torch.allclose(reseeded[kind]["features"], mine[kind]["features"])
