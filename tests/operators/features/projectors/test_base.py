"""Tests for operators.features.projectors.base: spec and registry, contract, fingerprints, determinism."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from operators.errors import ConfigError
from operators.features.projectors import PROJECTORS, ProjectionSpec, build_projector
from operators.features.projectors import base
from operators.features.projectors.dense import DenseProjector
from operators.features.projectors.kronecker import KroneckerProjector
from operators.features.projectors.base import layer_seed, ordered_sum
from tests.operators.features.projectors.helpers import LAYERS, grads, right_padded_mask, token_pairs

REPO = Path(__file__).resolve().parents[4]
KINDS = ["kronecker", "dense"]


def test_spec_validation_uses_the_registry() -> None:
    assert PROJECTORS.names() == ["dense", "kronecker"]
    assert ProjectionSpec().kind == "kronecker"
    assert ProjectionSpec(kind="dense").kind == "dense"
    with pytest.raises(ValidationError, match=r"unknown projection kind 'sparse'; known: \['dense', 'kr"):
        ProjectionSpec(kind="sparse")
    with pytest.raises(ValidationError, match="rank"):
        ProjectionSpec(rank=0)
    with pytest.raises(ValidationError, match="dim"):
        ProjectionSpec(dim=-3)
    with pytest.raises(ValidationError):
        ProjectionSpec(bogus=1)
    with pytest.raises(ValidationError):
        ProjectionSpec().rank = 4  # frozen


@pytest.mark.parametrize("kind", KINDS)
def test_build_projector_picks_the_registered_class(kind: str) -> None:
    proj = build_projector(ProjectionSpec(kind=kind, rank=4, dim=32), LAYERS)
    assert type(proj) is PROJECTORS.get(kind) and proj.kind == kind
    assert proj.layer_names == sorted(LAYERS)


def test_layer_seed_distinct() -> None:
    # cross-process stability is checked in test_bitwise_identical_across_processes
    assert layer_seed(3, "model.layers.0.q") != layer_seed(4, "model.layers.0.q")
    assert layer_seed(3, "model.layers.0.q") != layer_seed(3, "model.layers.0.k")
    assert 0 <= layer_seed(0, "x") < 2**63


def test_ordered_sum_adds_left_to_right() -> None:
    big, small = torch.tensor([1e8], dtype=torch.float32), torch.tensor([1.0], dtype=torch.float32)
    assert float(ordered_sum([big, small, -big])) == 0.0  # (1e8 + 1) rounds to 1e8 in float32
    assert float(ordered_sum([big, -big, small])) == 1.0


def test_bad_inputs_raise() -> None:
    with pytest.raises(ConfigError, match="empty"):
        build_projector(ProjectionSpec(), {})
    with pytest.raises(ConfigError, match="blk.0.a"):
        build_projector(ProjectionSpec(), {"blk.0.a": (0, 3)})
    for kind in KINDS:
        proj = build_projector(ProjectionSpec(kind=kind, dim=8), LAYERS)
        g = grads(LAYERS, 2, 0)
        g["blk.1.c"] = torch.zeros(2, 3, 16)
        with pytest.raises(ConfigError, match="blk.1.c"):
            proj.project(g)
        with pytest.raises(ConfigError, match=r"missing for layers \['blk.0.b'\]"):
            proj.project({k: v for k, v in grads(LAYERS, 2, 0).items() if k != "blk.0.b"})


def test_describe_fingerprint() -> None:
    spec = ProjectionSpec(kind="kronecker", rank=4, seed=7)
    d = build_projector(spec, LAYERS).describe()
    assert d["kind"] == "kronecker" and d["rank"] == 4 and d["seed"] == 7 and "dim" not in d
    assert d["layers"] == sorted(LAYERS) and d["output_dim"] == build_projector(spec, LAYERS).output_dim
    def fingerprint(s: ProjectionSpec, layers: dict[str, tuple[int, int]]) -> object:
        return build_projector(s, layers).describe()["fingerprint"]

    assert d["fingerprint"] == fingerprint(spec, dict(reversed(list(LAYERS.items()))))
    assert d["fingerprint"] != fingerprint(spec.model_copy(update={"seed": 8}), LAYERS)
    assert d["fingerprint"] != fingerprint(spec, {**LAYERS, "blk.1.c": (3, 17)})
    json.dumps(d)  # manifest-serialisable
    dd = build_projector(ProjectionSpec(kind="dense", dim=32), LAYERS).describe()
    assert dd["dim"] == 32 and dd["output_dim"] == 32 and "rank" not in dd


@pytest.mark.parametrize(("kind", "fingerprint", "digest"), [
    ("kronecker", "a2e5dd97562931daeaf6bd704193b186", "0f1cadbc6ead61c3b63bb01a57ab73d4"),
    ("dense", "f21c46f71956146f8a02590aa9f25869", "3b73b841853f6e183ac36db55922ea77"),
])
def test_fingerprints_and_matrices_match_recorded_runs(kind: str, fingerprint: str, digest: str) -> None:
    """Values computed before the projector registry existed: runs record them and compare them on resume."""
    d = build_projector(ProjectionSpec(kind=kind, rank=6, dim=64, seed=5), LAYERS).describe()
    assert (d["fingerprint"], d["matrix_digest"]) == (fingerprint, digest)


@pytest.mark.parametrize("kind", KINDS)
def test_default_project_pairs_forms_gradients_in_blocks(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The base path: masked Σ_t δ_t x_tᵀ over all calls, transformed, projected; chunking changes nothing."""
    proj = build_projector(ProjectionSpec(kind=kind, rank=4, dim=32, seed=1), LAYERS)
    name, (d_in, d_out) = "blk.0.a", LAYERS["blk.0.a"]
    pairs = token_pairs((d_in, d_out), b=5, t=7, calls=2, seed=3)
    mask = right_padded_mask([7, 3, 5, 1, 6], 7)
    full = sum(torch.einsum("bto,bti->boi", d * mask, x) for x, d in pairs)

    def transform(layer: str, g: torch.Tensor) -> torch.Tensor:
        assert layer == name
        return torch.tanh(g)

    got, sums = base.Projector.project_pairs(proj, name, pairs, mask, transform, kfac=True)
    assert sums is None  # the generic path has no K-FAC factors
    expect = proj.project_layer(name, torch.tanh(full))
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(base, "BLOCK_ELEMS", 2 * d_in * d_out)  # two examples per block
    chunked, _ = base.Projector.project_pairs(proj, name, pairs, mask, transform)
    torch.testing.assert_close(chunked, got, rtol=1e-6, atol=1e-6)


def test_kfac_layout_is_optional() -> None:
    assert build_projector(ProjectionSpec(kind="dense", dim=16), LAYERS).kfac_layout() is None
    layout = build_projector(ProjectionSpec(kind="kronecker", rank=4), LAYERS).kfac_layout()
    assert layout is not None and list(layout) == sorted(LAYERS)


def _snapshot(seed: int) -> dict[str, dict]:
    """Features, matrix digest and matrices of both projector kinds for fixed float64-drawn gradients."""
    g = torch.Generator().manual_seed(99)
    gr = {n: torch.randn(3, o, i, generator=g, dtype=torch.float64).float() for n, (i, o) in LAYERS.items()}
    res: dict[str, dict] = {"seeds": {k: layer_seed(3, f"model.layers.0.{k}") for k in ("q", "k")}}
    kron = KroneckerProjector(ProjectionSpec(kind="kronecker", rank=6, seed=seed), LAYERS)
    dense = DenseProjector(ProjectionSpec(kind="dense", dim=64, seed=seed), LAYERS)
    mats = {"kronecker": {**kron.p_in, **{k + "/out": v for k, v in kron.p_out.items()}},
            "dense": {**dense.indices, **{k + "/signs": dense.signs(k) for k in dense.layers}}}
    for p in (kron, dense):
        res[p.kind] = {"features": p.project(gr), "digest": p.matrix_digest, "mats": mats[p.kind]}
    return res


_CHILD = ("import sys, torch; from tests.operators.features.projectors.test_base import _snapshot; "
          "torch.save(_snapshot(5), sys.argv[1])")


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
    for kind in KINDS:
        assert torch.equal(mine[kind]["features"], other[kind]["features"])
        assert mine[kind]["digest"] == other[kind]["digest"] == scalar[kind]["digest"]
        assert all(torch.equal(mine[kind]["mats"][k], scalar[kind]["mats"][k]) for k in mine[kind]["mats"])
        torch.testing.assert_close(mine[kind]["features"], scalar[kind]["features"], rtol=1e-5, atol=1e-5)
        assert reseeded[kind]["digest"] != mine[kind]["digest"]
        assert not torch.allclose(reseeded[kind]["features"], mine[kind]["features"])
