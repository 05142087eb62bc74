"""TiKMiX-D as published (Eq. 9–11): objective, Pareto constraint and SLSQP solution."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from operators.mixture.tikmix_paper import normalised_task_matrix, paper_objective, solve_tikmix_paper


def test_task_normalisation_by_best_domain_keeps_signs() -> None:
    S = np.array([[2.0, 1.0, -1.0], [-0.5, -1.0, -2.0]])
    S_hat = normalised_task_matrix(S)
    np.testing.assert_allclose(S_hat[0], [1.0, 0.5, -0.5], rtol=1e-6)
    np.testing.assert_allclose(S_hat[1], [-1.0, -2.0, -4.0], rtol=1e-6)


def test_solution_matches_brute_force_and_meets_pareto() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        S = rng.uniform(0.1, 2.0, size=(4, 6)) * rng.uniform(0.01, 1.0, size=(4, 1))  # task scales differ
        prior = rng.dirichlet(np.ones(6))
        w, info = solve_tikmix_paper(S, prior)
        assert abs(w.sum() - 1) < 1e-9 and np.all(w >= -1e-12)
        S_hat = normalised_task_matrix(S)
        assert not info["pareto_dropped"]
        assert np.all(S_hat @ w >= S_hat @ prior - 1e-6)
        best = min(
            (minimize(lambda x: paper_objective(x, S_hat, 1, 1, 1), x0, method="SLSQP", bounds=[(0, 1)] * 6,
                      constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1},
                                   {"type": "ineq", "fun": lambda x: S_hat @ x - S_hat @ prior}]).fun
             for x0 in rng.dirichlet(np.ones(6), size=4)))
        assert info["objective"] <= best + 1e-6


def test_infeasible_pareto_is_dropped_and_reported() -> None:
    S = np.array([[1.0, 0.0], [0.0, 1.0]])
    prior = np.array([0.5, 0.5])
    w, info = solve_tikmix_paper(S, prior, lower=np.array([0.0, 0.0]), upper=np.array([0.3, 1.0]))
    assert info["pareto_dropped"]
    assert w[0] <= 0.3 + 1e-9 and abs(w.sum() - 1) < 1e-9
