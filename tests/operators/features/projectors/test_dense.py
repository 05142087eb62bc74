"""Tests for operators.features.projectors.dense: the explicit SRHT, chunking, memory, JL error size."""

from __future__ import annotations

import math

import pytest
import torch

from operators.errors import ConfigError
from operators.features.projectors import ProjectionSpec, base, build_projector
from operators.features.projectors.dense import DenseProjector, walsh_hadamard
from tests.operators.features.projectors.helpers import LAYERS, cos, cos_rmse_and_bound, grads


def _sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _dense_matrix(proj: DenseProjector, name: str) -> torch.Tensor:
    """The k x (out*in) matrix the projector applies to one layer (by projecting unit vectors)."""
    d_in, d_out = proj.layers[name]
    eye = torch.eye(d_in * d_out).reshape(-1, d_out, d_in)
    return proj.project_layer(name, eye).T


def test_is_a_subsampled_randomized_hadamard_transform() -> None:
    proj = DenseProjector(ProjectionSpec(kind="dense", dim=16, seed=2), LAYERS)
    assert proj.output_dim == 16
    g = grads(LAYERS, b=4, seed=1)
    flat = torch.cat([g[n].reshape(4, -1) for n in sorted(LAYERS)], dim=1)
    big_p = torch.cat([_dense_matrix(proj, n) for n in sorted(LAYERS)], dim=1)
    assert big_p.shape == (16, sum(i * o for i, o in LAYERS.values()))
    torch.testing.assert_close(proj.project(g), flat @ big_p.T, rtol=1e-4, atol=1e-4)
    # explicit SRHT: sqrt(n/k) * rows idx of H_n diag(signs) on the zero-padded coordinates
    name = "blk.0.a"
    n = proj.sizes[name]
    assert n == 256  # next power of two of 20 * 12
    h = _sylvester(n) / math.sqrt(n)
    explicit = math.sqrt(n / 16) * h[proj.indices[name]][:, :240] * proj.signs(name).double()
    torch.testing.assert_close(_dense_matrix(proj, name).double(), explicit, rtol=1e-5, atol=1e-5)


def test_chunking_over_examples_does_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    wide = {"w": (300, 300)}
    g = grads(wide, b=5, seed=3)
    full = DenseProjector(ProjectionSpec(kind="dense", dim=8), wide).project(g)
    monkeypatch.setattr(base, "BLOCK_ELEMS", 2 * 131072)  # two examples per block
    chunked = DenseProjector(ProjectionSpec(kind="dense", dim=8), wide).project(g)
    torch.testing.assert_close(chunked, full)


def test_memory_is_independent_of_k_times_d() -> None:
    """A 100M-weight layer set at k=4096 builds instantly: only indices and a bounded sign cache."""
    layers = {f"l{i}": (4096, 4096) for i in range(6)}  # 100M weights; a k x D matrix would be 1.6 TB
    proj = DenseProjector(ProjectionSpec(kind="dense", dim=4096), layers, sign_cache_bytes=1 << 20)
    held = sum(t.numel() * t.element_size() for t in proj.indices.values())
    assert held == 6 * 4096 * 8
    signs = proj.signs("l0")
    assert signs.numel() == 4096 * 4096 and not proj._signs  # over budget: regenerated, not cached
    assert abs(float(signs.float().mean())) < 0.002


def test_walsh_hadamard_matches_sylvester_matrix() -> None:
    for n in (1, 2, 64, 2048):
        x = torch.randn(3, n, dtype=torch.float64)
        torch.testing.assert_close(walsh_hadamard(x.float()).double(), x @ _sylvester(n) / math.sqrt(n),
                                   rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="power of two"):
        walsh_hadamard(torch.zeros(1, 12))


@pytest.mark.parametrize("k", [256, 1024])
def test_jl_error_matches_bound(k: int) -> None:
    rmse, bound = cos_rmse_and_bound(ProjectionSpec(kind="dense", dim=k, seed=3))
    assert 0.5 * bound < rmse < 1.5 * bound


def test_jl_error_on_low_rank_gradients() -> None:
    """Per-example gradients Σ_t δ_t x_tᵀ have low rank; the SRHT error must still follow the JL bound."""
    g = torch.Generator().manual_seed(4)
    n, k = 200, 512
    shared = torch.randn(2, 48, 1, generator=g), torch.randn(2, 1, 40, generator=g)
    own = [torch.randn(n, 48, 2, generator=g), torch.randn(n, 2, 40, generator=g)]
    gr = own[0] @ own[1] + (shared[0] @ shared[1]).sum(0)  # rank 3, cosines spread over (0, 1)
    a, b = gr[: n // 2], gr[n // 2:]
    c = cos(a.flatten(1), b.flatten(1))
    bound = float(((1 - c**2) ** 2).mean().sqrt()) / math.sqrt(k)
    ratios = []
    for seed in range(8):  # the shared component correlates the pairs' errors: average projectors
        proj = build_projector(ProjectionSpec(kind="dense", dim=k, seed=seed), {"w": (40, 48)})
        pc = cos(proj.project({"w": a}), proj.project({"w": b}))
        ratios.append(float(((pc - c) ** 2).mean().sqrt()) / bound)
    assert 0.75 < sum(ratios) / len(ratios) < 1.25
