"""Multi-step influence read off probe trajectories: recovers saturating vs still-paying domains, honest SEs."""

from __future__ import annotations

import numpy as np
import pytest

from operators.errors import ConfigError
from operators.influence.trajectory import trajectory_influence
from operators.mixture.horizon import extrapolation_weights

POINTS = [4, 8, 16]


def _probes(rng, M=24, S=2, noise=0.004):
    """Mixtures over 4 domains; domain 0 pays early and saturates, domain 1 pays little at first but keeps
    paying (log-linear growth), 2 and 3 do nothing. Returns W, ΔL (M, S, P, 1), the true drops (P, K)."""
    K = 4
    W = rng.dirichlet(np.ones(K), M)
    t = np.log(np.array(POINTS, dtype=float))
    drop = np.stack([np.full(3, 0.06), 0.02 * t, np.zeros(3), np.zeros(3)], axis=1)  # (P, K)
    base = -0.1 * t  # every mixture's loss falls
    mean = base[None, :] - W @ drop.T  # (M, P)
    d = mean[:, None, :] + noise * rng.standard_normal((M, S, len(POINTS)))
    return W, d[..., None], drop


def test_recovers_domain_effects_relative_to_their_mean_and_their_size_at_the_stage_horizon():
    rng = np.random.default_rng(0)
    W, d, drop = _probes(rng)
    coef, _ = extrapolation_weights(POINTS, 160.0)
    out = trajectory_influence(W, d, coef, ridge=1e-3)
    true_t = coef @ drop  # (K,) drops at the stage horizon
    centred = true_t - true_t.mean()
    est = out["gi"][:, 0] - out["gi"][:, 0].mean()
    assert np.argmax(est) == 1  # the still-paying domain ranks first at the stage horizon ...
    assert np.argmax(out["at_points"][0, :, 0]) == 0  # ... while the saturating one leads at the first point
    err = np.abs(est - centred)
    assert np.all(err < 4 * out["se"][:, 0] + 1e-3), (est, centred, out["se"][:, 0])
    assert np.all(out["r2"] > 0.5)


def test_standard_errors_track_the_actual_error_over_draws():
    coef, _ = extrapolation_weights(POINTS, 160.0)
    errs, ses = [], []
    for s in range(40):
        rng = np.random.default_rng(100 + s)
        W, d, drop = _probes(rng, noise=0.01)
        out = trajectory_influence(W, d, coef, ridge=1e-3, n_boot=100, seed=s)
        true_t = coef @ drop
        est = out["gi"][:, 0]
        errs.append((est - est.mean()) - (true_t - true_t.mean()))
        ses.append(out["se"][:, 0])
    rmse, mean_se = np.sqrt(np.mean(np.square(errs), axis=0)), np.mean(ses, axis=0)
    assert np.all(mean_se > 0.5 * rmse) and np.all(mean_se < 2.5 * rmse), (rmse, mean_se)


def test_bad_shapes_and_too_few_mixtures_are_named():
    W = np.full((2, 3), 1 / 3)
    with pytest.raises(ConfigError, match="at least 3"):
        trajectory_influence(W, np.zeros((2, 2, 3, 1)), np.array([0.0, 0.0, 1.0]))
    with pytest.raises(ConfigError, match="do not fit"):
        trajectory_influence(np.full((4, 3), 1 / 3), np.zeros((4, 2, 2, 1)), np.array([0.0, 0.0, 1.0]))


def test_anchoring_falls_back_to_first_order_for_noisy_domains_and_keeps_clear_disagreement():
    from operators.influence.trajectory import anchor_to_first_order

    rng = np.random.default_rng(3)
    first = np.linspace(-1, 1, 8)[:, None]
    truth = 0.05 * first  # the probes agree with first order, in their own units ...
    truth[2, 0] = 0.2  # ... except one domain that first order undervalues (e.g. still learnable)
    se = np.full((8, 1), 0.01)
    se[5, 0] = 0.5  # one domain measured very noisily
    measured = truth + se * rng.standard_normal(se.shape)
    out, info = anchor_to_first_order(measured, se, first)
    assert abs(out[5, 0] - 0.05 * first[5, 0]) < 0.02  # the noisy one falls back to the line
    assert abs(out[2, 0] - 0.2) < 0.03  # the clear disagreement is kept
    assert info["kept"][0][2] > 0.9 and info["kept"][0][5] < 0.05
    with pytest.raises(ConfigError, match="must all be"):
        anchor_to_first_order(measured, se, first[:4])
