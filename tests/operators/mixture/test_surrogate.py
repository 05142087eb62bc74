"""Tests for operators.mixture.surrogate: proposals from a fit on measured mixtures."""

import numpy as np

from operators.mixture.explore import dirichlet_around
from operators.mixture.surrogate import propose

LO, HI = np.full(4, 0.02), np.full(4, 0.8)
BEST = np.array([0.1, 0.55, 0.25, 0.1])


def quality(W: np.ndarray) -> np.ndarray:
    """A smooth concave quality peaked at BEST (what probes would measure, noise-free)."""
    return -((W - BEST) ** 2).sum(axis=1)


def test_proposals_move_toward_the_true_optimum() -> None:
    W = dirichlet_around(np.full(4, 0.25), 20, seed=0, lower=LO, upper=HI)
    y = quality(W) + np.random.default_rng(0).normal(0, 1e-3, len(W))
    X, report = propose(W, y, np.array([0.1, 0.3, 0.2, -0.1]), LO, HI, n=3, seed=0)
    assert 1 <= len(X) <= 3 and report["regressor"]["cv_r2"] > 0.5
    np.testing.assert_allclose(X.sum(axis=1), 1.0, atol=1e-9)
    assert np.all((X >= LO - 1e-9) & (X <= HI + 1e-9))
    assert quality(X).max() > quality(W).max()  # better than anything measured
    for x in X:  # new mixtures, not repeats of measured ones
        assert np.abs(W - x).sum(axis=1).min() >= 0.1 - 1e-9


def test_no_proposals_without_held_out_skill() -> None:
    W = dirichlet_around(np.full(4, 0.25), 12, seed=1, lower=LO, upper=HI)
    y = np.random.default_rng(1).normal(size=12)  # labels unrelated to the mixtures
    X, report = propose(W, y, None, LO, HI, n=3, seed=0, min_cv_r2=0.2)
    assert len(X) == 0 and "no proposals" in report["reason"]
    X, report = propose(W[:3], y[:3], None, LO, HI, n=3)
    assert len(X) == 0 and not report["fitted"]


def test_proposal_intervals_widen_with_measurement_noise() -> None:
    from operators.mixture.surrogate import proposal_intervals
    W = dirichlet_around(np.full(4, 0.25), 20, seed=0, lower=LO, upper=HI)
    rng = np.random.default_rng(2)
    y = quality(W) + rng.normal(0, 1e-3, len(W))
    X, _ = propose(W, y, None, LO, HI, n=2, seed=0)
    widths = []
    for noise in (1e-3, 3e-2):
        reps = y[None, :] + rng.normal(0, noise, (24, len(W)))
        ci = proposal_intervals(W, reps, None, LO, HI, X, confidence=0.9, seed=0)
        assert ci["of"] == 24 and 0 < ci["replicates"] <= 24
        assert ci["low"].shape == X.shape and np.all(ci["low"] <= ci["high"] + 1e-12)
        assert np.all((ci["low"] >= LO - 1e-9) & (ci["high"] <= HI + 1e-9))
        widths.append(float((ci["high"] - ci["low"]).mean()))
    assert widths[1] > 2 * widths[0]  # noisier measurements, a less certain proposal


def test_proposal_intervals_without_any_fit() -> None:
    from operators.mixture.surrogate import proposal_intervals
    W = dirichlet_around(np.full(4, 0.25), 12, seed=1, lower=LO, upper=HI)
    reps = np.random.default_rng(1).normal(size=(5, 12))  # every replicate unrelated to the mixtures
    ci = proposal_intervals(W, reps, None, LO, HI, W[:1], min_cv_r2=0.2)
    assert ci == {"replicates": 0, "of": 5}
