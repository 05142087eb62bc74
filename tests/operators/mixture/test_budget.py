"""Budget-aware TiKMiX-D: planned epochs, the repeated-data value curve and the budgeted solver."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from operators.mixture.budget import Budget, budgeted_gain, solve_budgeted
from operators.errors import ConfigError
from operators.mixture.simplex import solve_tikmix_d


def _kl(w, r):
    w = np.maximum(w, 1e-300)
    return float(np.sum(w * np.log(w / r)))


def test_epochs_and_reuse_cap() -> None:
    b = Budget(1000.0, np.array([100.0, 1000.0, 0.0]), max_epochs=4.0)
    np.testing.assert_allclose(b.epochs(np.array([0.5, 0.5, 0.0])), [5.0, 0.5, 0.0])
    np.testing.assert_allclose(b.reuse_upper(), [0.4, 1.0, 0.0])
    assert np.isinf(b.epochs(np.array([0.0, 0.0, 0.1]))[2])


def test_value_curve_follows_muennighoff() -> None:
    b = Budget(1000.0, np.array([100.0]), max_epochs=None, repetition_scale=15.4)
    # first pass is worth its tokens; 1 + R passes are worth U(1 + R*(1 - exp(-R/R*)))
    assert b.value(np.array([0.05]))[0] == pytest.approx(0.05)
    reps = 9.0
    expect = 0.1 * (1 + 15.4 * (1 - np.exp(-reps / 15.4)))
    assert b.value(np.array([1.0]))[0] == pytest.approx(expect)
    # slope is continuous at the end of the first pass and decays afterwards
    assert b.slope(np.array([0.1]))[0] == pytest.approx(1.0)
    assert b.slope(np.array([1.0]))[0] == pytest.approx(np.exp(-reps / 15.4))


def test_without_repetition_equals_plain_tikmix_d() -> None:
    s = np.array([1.5, 0.3, -0.2, 0.9])
    r = np.array([0.1, 0.2, 0.3, 0.4])
    lo, hi = np.full(4, 0.02), np.full(4, 0.7)
    b = Budget(1e6, np.full(4, 1e9), max_epochs=None)
    np.testing.assert_allclose(solve_budgeted(s, r, 0.5, lo, hi, b), solve_tikmix_d(s, r, 0.5, lo, hi),
                               atol=1e-9)


def test_budgeted_solution_is_the_optimum() -> None:
    rng = np.random.default_rng(0)
    for _ in range(10):
        k = 5
        s = rng.normal(size=k)
        r = rng.dirichlet(np.ones(k))
        b = Budget(1e6, rng.uniform(2e4, 5e5, size=k), max_epochs=None)
        lo, hi = np.zeros(k), np.ones(k)
        w = solve_budgeted(s, r, 0.3, lo, hi, b)
        f = lambda x: -(budgeted_gain(x, s, b) - 0.3 * _kl(x, r))  # noqa: E731
        ref = minimize(f, np.full(k, 1 / k), method="SLSQP", bounds=[(1e-9, 1)] * k,
                       constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}],
                       options={"ftol": 1e-14, "maxiter": 500}).x
        assert abs(w.sum() - 1) < 1e-9
        assert -f(w) >= -f(ref) - 1e-7


def test_small_domain_gets_less_weight_when_it_would_repeat() -> None:
    s = np.array([1.0, 0.8, 0.0])
    r = np.full(3, 1 / 3)
    lo, hi = np.zeros(3), np.ones(3)
    plenty = Budget(1e6, np.array([1e9, 1e9, 1e9]), max_epochs=None)
    scarce = Budget(1e6, np.array([1e4, 1e9, 1e9]), max_epochs=None)  # domain 0 = 1% of the stage
    w_plenty = solve_budgeted(s, r, 0.2, lo, hi, plenty)
    w_scarce = solve_budgeted(s, r, 0.2, lo, hi, scarce)
    assert w_plenty[0] > w_plenty[1]
    assert w_scarce[0] < w_plenty[0] and w_scarce[1] > w_plenty[1]


def test_bad_budget_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="budget"):
        Budget(0.0, np.ones(2))
    with pytest.raises(ConfigError, match="tokens_available"):
        Budget(10.0, np.array([1.0, -1.0]))


def test_relax_reuse_caps_raises_every_cap_by_one_factor() -> None:
    from operators.mixture.budget import relax_reuse_caps

    # 10_000 tokens of stage, 1_000 + 500 + 250 tokens of data, max 4 epochs: caps 0.4 + 0.2 + 0.1 = 0.7 < 1
    b = Budget(10_000.0, np.array([1000.0, 500.0, 250.0]), max_epochs=4.0)
    relaxed, info = relax_reuse_caps(b, np.ones(3))
    caps = relaxed.reuse_upper()
    assert caps.sum() == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(caps / b.reuse_upper(), caps[0] / b.reuse_upper()[0])  # same factor
    assert relaxed.max_epochs == pytest.approx(4.0 / 0.7, rel=1e-9)
    assert info["max_epochs_configured"] == 4.0 and "max_epochs=4" in info["reason"]
    assert info["caps_configured"] == pytest.approx([0.4, 0.2, 0.1])


def test_relax_reuse_caps_respects_the_box_and_leaves_feasible_budgets_alone() -> None:
    from operators.mixture.budget import relax_reuse_caps

    b = Budget(10_000.0, np.array([1000.0, 500.0, 250.0]), max_epochs=4.0)
    box = np.array([0.3, 1.0, 1.0])  # the first domain is boxed below its reuse cap
    relaxed, info = relax_reuse_caps(b, box)
    assert np.minimum(box, relaxed.reuse_upper()).sum() == pytest.approx(1.0, abs=1e-9)
    assert np.minimum(box, relaxed.reuse_upper())[0] == pytest.approx(0.3)
    same, none = relax_reuse_caps(Budget(1000.0, np.array([1000.0, 500.0]), max_epochs=4.0), np.ones(2))
    assert none is None and same.max_epochs == 4.0
    _, boxed_out = relax_reuse_caps(b, np.array([0.2, 0.2, 0.2]))  # the box alone is infeasible: not ours
    assert boxed_out is None


def test_tokens_consumed_by_earlier_stages_count_toward_epochs_caps_and_value() -> None:
    fresh = Budget(1000.0, np.array([500.0, 5000.0]), max_epochs=4.0)
    used = Budget(1000.0, np.array([500.0, 5000.0]), max_epochs=4.0, tokens_consumed=np.array([1500.0, 0.0]))
    w = np.array([0.5, 0.5])
    np.testing.assert_allclose(used.epochs(w), [(1500 + 500) / 500, 0.1])  # 4 passes in all, not 1
    np.testing.assert_allclose(used.reuse_upper(), [(2000 - 1500) / 1000, 1.0])
    # the first pass over domain 0 was spent earlier: its share now buys repeats only
    assert used.value(w)[0] < fresh.value(w)[0] and used.value(w)[1] == fresh.value(w)[1]
    assert used.slope(np.array([0.0, 0.0]))[0] < 1.0 and fresh.slope(np.array([0.0, 0.0]))[0] == 1.0
    eps = 1e-6  # slope is the derivative of value
    np.testing.assert_allclose((used.value(w + eps) - used.value(w - eps)) / (2 * eps), used.slope(w), rtol=1e-5)
    with pytest.raises(ConfigError, match="tokens_consumed"):
        Budget(1000.0, np.array([500.0]), tokens_consumed=np.array([-1.0]))
