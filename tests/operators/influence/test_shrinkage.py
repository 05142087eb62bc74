"""Empirical-Bayes shrinkage of domain influence: noise collapses to the pool, real effects survive."""

from __future__ import annotations

import numpy as np
import pytest

from operators.errors import ConfigError
from operators.influence.shrinkage import between_domain_variance, shrink


def _noisy(rng, theta, n, sigma=1.0):
    se = sigma / np.sqrt(n)
    return theta + se * rng.standard_normal(theta.shape), se


def test_tau_estimate_is_near_zero_under_the_null_and_near_truth_with_signal():
    rng = np.random.default_rng(0)
    n = np.array([[68], [200], [500], [1000], [2000], [4000], [300], [800]], dtype=float)
    null = [between_domain_variance(*_noisy(rng, np.full((8, 1), 0.3), n))[0] for _ in range(400)]
    assert np.mean(null) < 0.2 * np.mean(1 / n)  # a small fraction of the average noise variance
    theta = np.linspace(-1, 1, 8)[:, None]
    se = 1 / np.sqrt(n * 100)
    w = 1 / se**2
    mu = (w * theta).sum() / w.sum()
    weighted_spread = (w * (theta - mu) ** 2).sum() / (w.sum() - (w**2).sum() / w.sum())  # the noiseless value
    est = [between_domain_variance(*_noisy(rng, theta, n * 100))[0] for _ in range(200)]
    assert np.mean(est) == pytest.approx(weighted_spread, rel=0.1)


def test_noise_collapses_onto_the_pooled_mean_and_a_clear_effect_is_kept():
    rng = np.random.default_rng(1)
    n = np.array([68, 200, 500, 1000, 2000], dtype=float)[:, None]
    gi, se = _noisy(rng, np.full((5, 1), 0.5), n)
    shrunk, info = shrink(gi, se)
    assert info["applied"]
    raw_spread, shrunk_spread = np.ptp(gi), np.ptp(shrunk)
    assert shrunk_spread < 0.5 * raw_spread  # most of the noise is gone
    theta = np.array([3.0, 0.0, 0.0, 0.0, 0.0])[:, None]
    gi, se = _noisy(rng, theta, n * 100)
    shrunk, info = shrink(gi, se)
    assert np.all(np.asarray(info["factor"]) > 0.95)
    np.testing.assert_allclose(shrunk, gi, atol=0.05 * np.ptp(gi))


def test_a_small_domain_is_pulled_harder_than_a_large_one_with_the_same_mean():
    gi = np.array([[1.0], [1.0], [0.0], [0.0], [0.5]])
    se = np.array([[0.8], [0.05], [0.05], [0.05], [0.05]])
    shrunk, info = shrink(gi, se)
    mu = info["pooled_mean"][0]
    assert abs(shrunk[0, 0] - mu) < abs(shrunk[1, 0] - mu)
    assert info["factor"][0][0] < info["factor"][1][0]


def test_replicate_stacks_use_the_same_standard_errors_and_bad_input_is_named():
    rng = np.random.default_rng(2)
    gi = rng.standard_normal((4, 5, 2))
    se = np.full((5, 2), 0.3)
    stack, _ = shrink(gi, se)
    np.testing.assert_allclose(stack[1], shrink(gi[1], se)[0])
    with pytest.raises(ConfigError, match="standard errors"):
        shrink(gi[0], se[:3])
    same, info = shrink(gi[0][:2], se[:2])  # too few domains to estimate a spread: unchanged
    assert not info["applied"] and np.array_equal(same, gi[0][:2])
