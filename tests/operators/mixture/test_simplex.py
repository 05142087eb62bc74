import numpy as np
import pytest
from pydantic import ValidationError
from scipy.optimize import minimize

from operators.errors import ConfigError
from operators.mixture.simplex import (
    MixtureConstraints,
    bounds_for,
    objective,
    project_bounded_simplex,
    resolve_reference,
    solve_tikmix_d,
)

DOMAINS = ["web", "code", "books", "math"]


def _slsqp(scores: np.ndarray, ref: np.ndarray, beta: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    start = np.clip(ref, lo, hi)
    res = minimize(
        lambda w: -objective(np.maximum(w, 1e-300), scores, ref, beta),
        start / start.sum(),
        method="SLSQP",
        bounds=list(zip(lo, hi)),
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
        options={"ftol": 1e-14, "maxiter": 2000},
    )
    return res.x


def _check_feasible(w: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(w >= lo - 1e-15) and np.all(w <= hi + 1e-15)


def test_constraints_validation() -> None:
    MixtureConstraints(min_weight=0.01, max_weight=0.5, domain_min={"web": 0.1}, domain_max={"web": 0.4})
    for bad in (
        {"min_weight": 0.6, "max_weight": 0.5},
        {"domain_min": {"web": 0.5}, "domain_max": {"web": 0.4}},
        {"domain_max": {"web": 1.5}},
        {"max_epochs": 0},
        {"tokens_next_stage": 1000},  # the budget is configured in mixture.budget
        {"unknown": 1},
    ):
        with pytest.raises(ValidationError):
            MixtureConstraints(**bad)


def test_bounds_with_reuse_caps_and_overrides() -> None:
    cons = MixtureConstraints(
        min_weight=0.05,
        max_weight=0.6,
        domain_min={"code": 0.1},
        domain_max={"web": 0.5},
    )
    tokens = {"web": 10_000, "code": 150, "books": 20, "math": 400}
    caps = 2 * np.array([tokens[d] for d in DOMAINS]) / 1000  # 2 epochs of a 1000-token stage
    lo, hi = bounds_for(DOMAINS, cons, caps)
    # upper = min(max_weight, domain_max, 2 × tokens / 1000)
    np.testing.assert_allclose(hi, [0.5, 0.3, 0.04, 0.6])
    # the global floor yields to a reuse cap (books), an explicit domain_min does not
    np.testing.assert_allclose(lo, [0.05, 0.1, 0.04, 0.05])
    with pytest.raises(ConfigError, match="domain_min exceeds"):
        bounds_for(DOMAINS, cons.model_copy(update={"domain_min": {"books": 0.1}}), caps)
    with pytest.raises(ConfigError, match="unknown domains"):
        bounds_for(DOMAINS, MixtureConstraints(domain_max={"wbe": 0.3}), None)


def test_infeasible_bounds_raise() -> None:
    with pytest.raises(ConfigError, match="lower bounds sum"):
        bounds_for(DOMAINS, MixtureConstraints(min_weight=0.3), None)
    with pytest.raises(ConfigError, match="upper bounds sum"):
        bounds_for(DOMAINS, MixtureConstraints(max_weight=0.2), None)
    with pytest.raises(ConfigError, match="max_epochs"):
        bounds_for(DOMAINS, MixtureConstraints(), np.full(len(DOMAINS), 0.1))  # 1 epoch of 1000 tokens each
    with pytest.raises(ConfigError):
        solve_tikmix_d(np.zeros(3), np.ones(3) / 3, 1.0, np.full(3, 0.5), np.ones(3))


def test_matches_slsqp_on_random_box_constrained_instances() -> None:
    rng = np.random.default_rng(0)
    for _ in range(25):
        k = int(rng.integers(3, 9))
        scores = rng.normal(scale=2.0, size=k)
        ref = rng.dirichlet(np.ones(k))
        beta = float(10 ** rng.uniform(-1, 1))
        lo = rng.uniform(1e-3, 0.5 / k, size=k)
        hi = rng.uniform(1.5 / k, 0.6, size=k)
        if hi.sum() < 1:
            hi = np.minimum(hi / hi.sum() * 1.2, 1.0)
        w = solve_tikmix_d(scores, ref, beta, lo, hi)
        _check_feasible(w, lo, hi)
        ours = objective(w, scores, ref, beta)
        theirs = objective(_slsqp(scores, ref, beta, lo, hi), scores, ref, beta)
        assert ours == pytest.approx(theirs, abs=1e-6)
        assert ours >= theirs - 1e-9


def test_unconstrained_solution_is_exponentiated_form() -> None:
    scores = np.array([0.5, -0.2, 1.0])
    ref = np.array([0.2, 0.5, 0.3])
    w = solve_tikmix_d(scores, ref, 0.7, np.zeros(3), np.ones(3))
    expected = ref * np.exp(scores / 0.7)
    np.testing.assert_allclose(w, expected / expected.sum(), rtol=1e-12)


def test_large_beta_returns_bounded_projection_of_reference() -> None:
    scores = np.array([3.0, -1.0, 0.5, 2.0])
    lo, hi = np.full(4, 0.05), np.array([0.5, 0.5, 0.15, 0.5])
    ref = np.array([0.1, 0.2, 0.4, 0.3])  # books above its cap
    w = solve_tikmix_d(scores, ref, 1e9, lo, hi)
    proj = solve_tikmix_d(np.zeros(4), ref, 1.0, lo, hi)  # zero scores: the KL projection of ref
    np.testing.assert_allclose(w, proj, atol=1e-8)
    assert proj[2] == pytest.approx(0.15)
    free = [0, 1, 3]  # uncapped domains keep the reference's proportions
    np.testing.assert_allclose(proj[free] / proj[free].sum(), ref[free] / ref[free].sum(), rtol=1e-10)
    inside = np.array([0.25, 0.25, 0.1, 0.4])
    np.testing.assert_allclose(solve_tikmix_d(scores, inside, 1e9, lo, hi), inside, atol=1e-8)


def test_small_beta_fills_best_domains_up_to_caps() -> None:
    scores = np.array([0.1, 2.0, 1.0, -1.0])
    lo, hi = np.full(4, 0.05), np.array([0.6, 0.4, 0.45, 0.6])
    w = solve_tikmix_d(scores, np.full(4, 0.25), 1e-4, lo, hi)
    # greedy LP solution: best domain (code) at its cap, next (books) at its cap, the rest at the floor except
    # the third-best, which takes the remainder
    np.testing.assert_allclose(w, [0.1, 0.4, 0.45, 0.05], atol=1e-6)


def test_reuse_caps_respected_by_solution() -> None:
    tokens = {"web": 50_000, "code": 1_000, "books": 500, "math": 2_000}
    lo, hi = bounds_for(DOMAINS, MixtureConstraints(), np.array([tokens[d] for d in DOMAINS]) / 10_000)
    w = solve_tikmix_d(np.array([-1.0, 3.0, 3.0, 2.0]), np.full(4, 0.25), 0.1, lo, hi)
    _check_feasible(w, lo, hi)
    caps = np.array([tokens[d] for d in DOMAINS]) / 10_000
    assert np.all(w <= caps + 1e-15)
    np.testing.assert_allclose(w[1:], caps[1:])  # high-score small domains saturate their reuse caps


def test_extreme_scores_do_not_overflow_and_zero_reference_stays_at_floor() -> None:
    scores = np.array([1e4, -1e4, 5e3, 0.0])
    ref = np.array([0.25, 0.25, 0.25, 0.25])
    w = solve_tikmix_d(scores, ref, 1e-3, np.zeros(4), np.ones(4))
    assert np.all(np.isfinite(w))
    np.testing.assert_allclose(w, [1, 0, 0, 0], atol=1e-12)
    lo = np.array([0.0, 0.1, 0.0, 0.0])
    w = solve_tikmix_d(np.array([0.0, 5.0, 1.0, 0.0]), np.array([0.5, 0.0, 0.3, 0.2]), 1.0, lo, np.ones(4))
    _check_feasible(w, lo, np.ones(4))
    assert w[1] == pytest.approx(0.1)
    assert objective(w, np.zeros(4), np.array([0.5, 0.0, 0.3, 0.2]), 1.0) == float("-inf")
    with pytest.raises(ConfigError, match="cannot reach sum 1"):
        solve_tikmix_d(np.zeros(3), np.array([0.5, 0.5, 0.0]), 1.0, np.zeros(3), np.array([0.3, 0.3, 1.0]))


def test_bounded_simplex_projection_matches_slsqp() -> None:
    rng = np.random.default_rng(1)
    for _ in range(10):
        v = rng.normal(size=5)
        lo, hi = np.full(5, 0.02), np.full(5, 0.5)
        w = project_bounded_simplex(v, lo, hi)
        _check_feasible(w, lo, hi)
        res = minimize(
            lambda x: np.sum((x - v) ** 2), np.full(5, 0.2), method="SLSQP", bounds=list(zip(lo, hi)),
            constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}], options={"ftol": 1e-14},
        )
        assert np.sum((w - v) ** 2) <= np.sum((res.x - v) ** 2) + 1e-9


def test_resolve_reference_kinds() -> None:
    np.testing.assert_allclose(resolve_reference("uniform", DOMAINS), 0.25)
    tokens = {"web": 6, "code": 2, "books": 1, "math": 1}
    np.testing.assert_allclose(resolve_reference("tokens", DOMAINS, tokens=tokens), [0.6, 0.2, 0.1, 0.1])
    with pytest.raises(ConfigError, match="math"):
        resolve_reference("tokens", DOMAINS, tokens={"web": 6, "code": 2, "books": 1})
    np.testing.assert_allclose(resolve_reference("previous", DOMAINS, previous=None), 0.25)
    prev = {"web": 0.5, "code": 0.3, "books": 0.2, "retired": 0.5}  # retired is dropped, math is new
    ref = resolve_reference("previous", DOMAINS, previous=prev, smoothing=0.0)
    share = 0.1 / 4
    np.testing.assert_allclose(ref, [0.5 * (1 - share), 0.3 * (1 - share), 0.2 * (1 - share), share])
    zeroed = {"web": 1.0, "code": 0.0, "books": 0.0, "math": 0.0}
    smoothed = resolve_reference("previous", DOMAINS, previous=zeroed)
    assert smoothed.sum() == pytest.approx(1.0) and np.all(smoothed > 0)  # a zeroed domain can come back
    with pytest.raises(ConfigError):
        resolve_reference("previous", DOMAINS, previous={"web": -1.0})
