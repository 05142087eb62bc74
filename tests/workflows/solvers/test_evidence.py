"""Scores that know how sure they are: pure-noise influence leaves the mixture at its prior, evidence moves it.

The noise model is the aggregation's: each domain's influence is a mean over its sampled examples
(68 to 3000 here), so its standard error shrinks with 1/sqrt(n); the bootstrap's standard-error estimate
itself carries ~1/sqrt(2B) relative noise (B = 200 replicates by default).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from workflows.solvers.base import SOLVERS
from workflows.stages.problem import build_problem
from tests.workflows.helpers import fast_config

DOMAINS = ["changelog", "code", "config", "docs", "legal"]
N = np.array([68, 300, 800, 1500, 3000], dtype=float)


def _problem(tmp_path, model_cache, shrinkage="empirical_bayes", targets=1):
    cfg = fast_config(str(tmp_path), model_cache, f"influence.shrinkage={shrinkage}")
    tokens = {d: int(n * 400) for d, n in zip(DOMAINS, N)}
    problem = build_problem(cfg, DOMAINS, tokens, None)
    return replace(problem, targets=[f"t{i}" for i in range(targets)], target_weights=np.full(targets, 1 / targets))


def _draw(rng, theta, targets=1, boot=200):
    se = (0.02 / np.sqrt(N))[:, None] * np.ones((1, targets))
    gi = theta[:, None] + se * rng.standard_normal(se.shape)
    se_est = se * (1 + rng.standard_normal(se.shape) / np.sqrt(2 * boot))
    return gi, se_est


def _tv(a, b):
    return 0.5 * float(np.abs(a - b).sum())


@pytest.mark.parametrize("targets", [1, 2])
def test_pure_noise_keeps_the_mixture_within_tv_0_1_of_the_prior_in_90_percent_of_draws(tmp_path, model_cache,
                                                                                       targets):
    rng = np.random.default_rng(targets)
    solver = SOLVERS.configured("tikmix_d", {})
    with_shrinkage = _problem(tmp_path, model_cache, targets=targets)
    without = _problem(tmp_path, model_cache, "none", targets=targets)
    tv_shrunk, tv_raw = [], []
    for i in range(300):
        gi, se = _draw(rng, np.full(5, 1e-3), targets)
        tv_shrunk.append(_tv(solver.solve(with_shrinkage.with_gi(gi, se)).weights, with_shrinkage.prior))
        if i < 60:  # enough to show the raw means move it
            tv_raw.append(_tv(solver.solve(without.with_gi(gi, se)).weights, without.prior))
    assert np.mean(np.array(tv_shrunk) <= 0.1) >= 0.9, np.quantile(tv_shrunk, [0.5, 0.9])
    assert np.mean(tv_raw) > 2 * np.mean(tv_shrunk[:60])  # the raw means would have moved it: the test has teeth


def test_a_well_measured_effect_still_moves_the_mixture(tmp_path, model_cache):
    rng = np.random.default_rng(7)
    problem = _problem(tmp_path, model_cache)
    solver = SOLVERS.configured("tikmix_d", {})
    theta = np.full(5, 1e-3)
    theta[3] += 20 * 0.02 / np.sqrt(N[3])  # docs is better by 20 of its standard errors
    gains = []
    for _ in range(20):
        gi, se = _draw(rng, theta)
        w = solver.solve(problem.with_gi(gi, se)).weights
        gains.append(w[3] - problem.prior[3])
    assert np.min(gains) > 0.1
