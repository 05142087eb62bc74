import numpy as np
import pytest

from operators.errors import ConfigError
from operators.influence.group import spearman
from operators.mixture.regression import MixtureRegressor, mixture_design, sample_dirichlet_mixtures

PRIOR = np.array([0.4, 0.25, 0.15, 0.12, 0.08])
OPTIMUM = np.array([0.3, 0.3, 0.2, 0.1, 0.1])
CURV = np.diag([4.0, 2.0, 3.0, 1.0, 2.0]) + 0.5  # positive definite with cross-domain interactions


def _quality(W: np.ndarray) -> np.ndarray:
    d = W - OPTIMUM
    return -np.einsum("ni,ij,nj->n", d, CURV, d)


def test_dirichlet_samples_lie_on_simplex_within_bounds() -> None:
    lo, hi = np.full(5, 0.01), np.full(5, 0.6)
    W = sample_dirichlet_mixtures(PRIOR, 500, seed=1, lower=lo, upper=hi)
    assert W.shape == (500, 5)
    np.testing.assert_allclose(W.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(W >= lo - 1e-12) and np.all(W <= hi + 1e-12)
    np.testing.assert_array_equal(W, sample_dirichlet_mixtures(PRIOR, 500, seed=1, lower=lo, upper=hi))
    # E[Dirichlet(p·s)] = p whatever the strength s
    many = sample_dirichlet_mixtures(PRIOR, 20_000, seed=2)
    np.testing.assert_allclose(many.mean(axis=0), PRIOR, atol=0.01)


def test_pinned_domains_keep_their_weight() -> None:
    lo = np.array([0.0, 0.3, 0.0, 0.0, 0.0])
    hi = np.array([1.0, 0.3, 1.0, 1.0, 0.2])
    W = sample_dirichlet_mixtures(PRIOR, 300, seed=3, lower=lo, upper=hi)
    np.testing.assert_allclose(W[:, 1], 0.3)
    np.testing.assert_allclose(W.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(W[:, 4] <= 0.2 + 1e-12) and W[:, 0].std() > 0.05


def test_too_tight_bounds_raise() -> None:
    with pytest.raises(ConfigError, match="too tight"):
        sample_dirichlet_mixtures(
            PRIOR, 100, seed=0, lower=np.full(5, 0.19), upper=np.full(5, 0.21), max_rounds=3
        )
    with pytest.raises(ConfigError, match="prior"):
        sample_dirichlet_mixtures(np.array([0.5, -0.1]), 10, seed=0)


def test_mixture_design_has_one_column_per_direction() -> None:
    """Σw = 1: the design drops what the simplex makes redundant and keeps full column rank."""
    W = sample_dirichlet_mixtures(PRIOR, 40, seed=9)
    s = np.array([1.0, -1.0, 2.0, 0.0, 0.5])
    X, names = mixture_design(W, s, ["a", "b", "c", "d", "e"])
    assert len(names) == X.shape[1] == 1 + 3 + 10  # w.s, 3 remaining linear directions, 10 cross terms
    assert names[0] == "w.s" and names[1:4] == ["lin0", "lin1", "lin2"] and names[4:6] == ["a*b", "a*c"]
    np.testing.assert_allclose(X[:, 0], W @ s)
    np.testing.assert_allclose(X[:, names.index("b*c")], W[:, 1] * W[:, 2])
    with_intercept = np.column_stack([np.ones(len(W)), X])
    assert np.linalg.matrix_rank(with_intercept) == X.shape[1] + 1  # no column is a combination of others
    plain, plain_names = mixture_design(W)
    assert plain.shape == (40, 4 + 10) and "w.s" not in plain_names
    assert np.linalg.matrix_rank(np.column_stack([np.ones(len(W)), plain])) == plain.shape[1] + 1
    # constant scores carry no direction: w.s is constant and the linear part keeps all K−1 directions
    X_flat, flat_names = mixture_design(W, np.full(5, 0.3))
    np.testing.assert_allclose(X_flat[:, 0], 0.3)
    assert flat_names[1:5] == ["lin0", "lin1", "lin2", "lin3"]


def test_first_order_influence_effect_is_recovered_by_the_w_s_coefficient() -> None:
    """Labels linear in w·s are fitted by the w.s coefficient alone (its slope recovered exactly); with
    curvature and noise on few local labels, as TiKMiX-M has, the slope is still recovered."""
    scores = np.array([1.0, 0.5, 0.0, -0.5, -1.0])
    train = sample_dirichlet_mixtures(PRIOR, 64, seed=8)
    reg = MixtureRegressor(influence=scores).fit(train, 3.0 * (train @ scores) + 0.7, alpha=1e-10)
    coef = reg.describe(top=len(reg.feature_names))["top_coefficients"]
    assert coef["w.s"] / (train @ scores).std() == pytest.approx(3.0, rel=1e-6)  # standardised → raw slope
    assert max(abs(v) for n, v in coef.items() if n != "w.s") < 1e-6 * abs(coef["w.s"])
    rng = np.random.default_rng(14)
    local = sample_dirichlet_mixtures(OPTIMUM, 25, seed=15, strengths=[300.0])
    y = 3.0 * (local @ scores) + 0.2 * _quality(local) + 1e-3 * rng.normal(size=25)
    noisy = MixtureRegressor(influence=scores).fit(local, y)
    slope = noisy.describe(top=len(noisy.feature_names))["top_coefficients"]["w.s"] / (local @ scores).std()
    assert slope == pytest.approx(3.0, rel=0.2)
    assert noisy.describe()["cv_r2"] > 0.5
    with pytest.raises(ConfigError):
        MixtureRegressor().predict(train)


@pytest.mark.parametrize("cv", ["loo", 5])
def test_regression_recovers_quadratic_quality(cv: str | int) -> None:
    rng = np.random.default_rng(3)
    train = sample_dirichlet_mixtures(PRIOR, 96, seed=3)
    test = sample_dirichlet_mixtures(PRIOR, 300, seed=4)
    y = _quality(train) + 0.005 * rng.normal(size=96)
    reg = MixtureRegressor(cv=cv).fit(train, y)
    assert spearman(reg.predict(test), _quality(test)) > 0.9
    assert reg.cv_spearman > 0.8
    info = reg.describe()
    assert info["alpha"] == reg.alpha and info["n_train"] == 96 and len(info["top_coefficients"]) == 10


def test_leave_one_out_error_and_bootstrap_uncertainty() -> None:
    rng = np.random.default_rng(11)
    train = sample_dirichlet_mixtures(OPTIMUM, 40, seed=11, strengths=[200.0])  # a small local cloud
    reg = MixtureRegressor().fit(train, _quality(train) + 1e-4 * rng.normal(size=40)).bootstrap(32, seed=1)
    info = reg.describe()
    assert info["cv_rmse"] < info["label_std"] and info["cv_r2"] > 0.5 and info["n_bootstrap"] == 32
    near = sample_dirichlet_mixtures(OPTIMUM, 50, seed=12, strengths=[200.0])
    far = np.tile(np.array([[0.9, 0.025, 0.025, 0.025, 0.025]]), (1, 1))
    mean, std = reg.predict_std(np.vstack([near, far]))
    np.testing.assert_allclose(mean, reg.predict(np.vstack([near, far])))
    assert std[-1] > 10 * np.median(std[:-1])  # extrapolation is flagged as uncertain
    np.testing.assert_allclose(reg.lower_bound(near, 2.0), mean[:-1] - 2.0 * std[:-1])


def test_pure_noise_labels_have_no_held_out_skill() -> None:
    train = sample_dirichlet_mixtures(PRIOR, 30, seed=13)
    r2 = [MixtureRegressor().fit(train, np.random.default_rng(s).normal(size=30)).describe()["cv_r2"]
          for s in range(5)]
    assert max(r2) <= 0.05
