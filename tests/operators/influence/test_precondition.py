"""Tests for operators.influence.precondition: streaming/merge additivity and solves against explicit inverses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from operators.errors import ConfigError, CorpusError
from operators.influence.precondition import GaussNewtonPreconditioner, IdentityPreconditioner, KFACPreconditioner


def _features(m: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, k)) @ rng.standard_normal((k, k))  # correlated columns


def test_gn_streaming_merge_equals_one_shot() -> None:
    phi = _features(90, 12, seed=0)
    one = GaussNewtonPreconditioner(12)
    one.update(phi)
    a, b = GaussNewtonPreconditioner(12), GaussNewtonPreconditioner(12)
    for part in np.array_split(phi[:50], 3):
        a.update(part)
    b.update(torch.from_numpy(phi[50:]))  # torch input accepted
    a.merge(GaussNewtonPreconditioner.from_state(b.to_state()))
    assert a.n == one.n == 90
    np.testing.assert_allclose(a.gram, one.gram, rtol=1e-12, atol=1e-9)
    x = _features(5, 12, seed=1)
    np.testing.assert_allclose(a.solve(x), one.solve(x), rtol=1e-9, atol=1e-12)


def test_gn_solve_matches_explicit_solve() -> None:
    phi = _features(40, 10, seed=2)
    pre = GaussNewtonPreconditioner(10)
    pre.update(phi)
    h = phi.T @ phi / 40
    x = _features(3, 10, seed=3)
    lam = 0.1 * np.trace(h) / 10
    assert pre.damping() == pytest.approx(lam)
    np.testing.assert_allclose(pre.solve(x), np.linalg.solve(h + lam * np.eye(10), x.T).T, rtol=1e-8, atol=1e-10)
    # explicit absolute damping overrides; relative damping scales the mean eigenvalue
    np.testing.assert_allclose(
        pre.solve(x, damping=0.5), np.linalg.solve(h + 0.5 * np.eye(10), x.T).T, rtol=1e-8, atol=1e-10
    )
    lam2 = 0.01 * np.trace(h) / 10
    np.testing.assert_allclose(
        pre.solve(x, relative_damping=0.01), np.linalg.solve(h + lam2 * np.eye(10), x.T).T, rtol=1e-7, atol=1e-10
    )
    # cached factorisation is invalidated by further updates
    pre.update(phi[:7])
    h2 = (phi.T @ phi + phi[:7].T @ phi[:7]) / 47
    np.testing.assert_allclose(pre.solve(x, damping=0.2), np.linalg.solve(h2 + 0.2 * np.eye(10), x.T).T, rtol=1e-8)


def test_gn_errors() -> None:
    pre = GaussNewtonPreconditioner(4)
    with pytest.raises(CorpusError, match="n = 0"):
        pre.solve(np.ones((1, 4)))
    with pytest.raises(ConfigError, match=r"\(m, 4\)"):
        pre.update(np.ones((2, 5)))
    with pytest.raises(ConfigError, match="dim"):
        pre.merge(GaussNewtonPreconditioner(3))
    pre.update(np.ones((2, 4)))
    with pytest.raises(ConfigError, match="damping"):
        pre.solve(np.ones((1, 4)), damping=-1.0)


def _kfac_stats(shapes: dict[str, tuple[int, int]], n_tok: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for name, (r_out, r_in) in shapes.items():
        xt = rng.standard_normal((n_tok, r_in)) @ rng.standard_normal((r_in, r_in))
        dt = rng.standard_normal((n_tok, r_out)) @ rng.standard_normal((r_out, r_out))
        out[name] = (xt.T @ xt, dt.T @ dt, n_tok)
    return out


SHAPES = {"a": (3, 4), "b": (2, 5)}
SLICES = {"a": slice(0, 12), "b": slice(12, 22)}


def test_kfac_solve_matches_explicit_kron_inverse() -> None:
    pre = KFACPreconditioner(SLICES, SHAPES)
    stats = _kfac_stats(SHAPES, n_tok=30, seed=4)
    pre.update({k: (torch.from_numpy(a), torch.from_numpy(b), n) for k, (a, b, n) in stats.items()})
    x = np.random.default_rng(5).standard_normal((6, 22))
    got = pre.solve(x)
    for name, sl in SLICES.items():
        fwd, bwd, n = stats[name]
        s_f, s_b = fwd / n, bwd / n
        kron = np.kron(s_b, s_f)  # covariance of the row-major vec of (r_out, r_in) blocks
        lam = 0.1 * np.mean(np.outer(np.linalg.eigvalsh(s_b), np.linalg.eigvalsh(s_f)))
        expect = np.linalg.solve(kron + lam * np.eye(kron.shape[0]), x[:, sl].T).T
        np.testing.assert_allclose(got[:, sl], expect, rtol=1e-8, atol=1e-10)
    # explicit absolute damping
    fwd, bwd, n = stats["a"]
    kron = np.kron(bwd / n, fwd / n)
    np.testing.assert_allclose(
        pre.solve(x, damping=0.3)[:, :12], np.linalg.solve(kron + 0.3 * np.eye(12), x[:, :12].T).T, rtol=1e-8
    )


def test_kfac_streaming_merge_and_state_roundtrip() -> None:
    s1, s2 = _kfac_stats(SHAPES, 10, seed=6), _kfac_stats(SHAPES, 25, seed=7)
    one = KFACPreconditioner(SLICES, SHAPES)
    one.update({k: (s1[k][0] + s2[k][0], s1[k][1] + s2[k][1], 35) for k in SHAPES})
    a, b = KFACPreconditioner(SLICES, SHAPES), KFACPreconditioner(SLICES, SHAPES)
    a.update(s1)
    b.update(s2)
    a.merge(KFACPreconditioner.from_state(b.to_state()))
    restored = KFACPreconditioner.from_state(a.to_state())
    assert restored.layer_slices == SLICES and restored.count == {"a": 35, "b": 35}
    x = np.random.default_rng(8).standard_normal((4, 22))
    np.testing.assert_allclose(restored.solve(x), one.solve(x), rtol=1e-9, atol=1e-12)


def test_kfac_errors() -> None:
    with pytest.raises(ConfigError, match="slice"):
        KFACPreconditioner({"a": slice(0, 5)}, {"a": (2, 3)})
    pre = KFACPreconditioner(SLICES, SHAPES)
    with pytest.raises(CorpusError, match="'a'"):
        pre.solve(np.ones((1, 22)))
    with pytest.raises(ConfigError, match="unknown"):
        pre.update({"zzz": (np.eye(1), np.eye(1), 1)})
    with pytest.raises(ConfigError, match="'b'"):
        pre.update({"b": (np.eye(4), np.eye(2), 1)})


def test_identity() -> None:
    x = np.arange(6.0).reshape(2, 3)
    out = IdentityPreconditioner().solve(x)
    np.testing.assert_array_equal(out, x)
    out[0, 0] = 99.0
    assert x[0, 0] == 0.0  # a copy, not a view
    assert IdentityPreconditioner.from_state(IdentityPreconditioner().to_state()).solve(x).dtype == np.float64
