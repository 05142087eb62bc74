import numpy as np
import pytest

from operators.errors import ConfigError
from operators.influence.group import spearman
from operators.mixture.regression import (
    MixtureRegressor,
    choose_mixture,
    compare_mixtures,
    mixture_design,
    sample_dirichlet_mixtures,
)

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


def test_mixture_design_features_and_names() -> None:
    W = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    s = np.array([1.0, -1.0, 2.0])
    X, names = mixture_design(W, s, ["a", "b", "c"])
    assert X.shape == (2, 3 + 3 + 3 + 1) and len(names) == X.shape[1]
    assert names[:3] == ["a", "b", "c"] and names[3] == "a^2" and "a*b" in names and names[-1] == "w.s"
    np.testing.assert_allclose(X[:, names.index("b*c")], W[:, 1] * W[:, 2])
    np.testing.assert_allclose(X[:, -1], W @ s)
    assert mixture_design(W)[0].shape == (2, 9)


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


def test_choose_mixture_lands_near_known_optimum() -> None:
    train = sample_dirichlet_mixtures(PRIOR, 128, seed=5)
    reg = MixtureRegressor().fit(train, _quality(train))
    lo, hi = np.full(5, 0.02), np.full(5, 0.5)
    w = choose_mixture(reg, PRIOR, lo, hi, n_samples=20_000, top_k=64, seed=6)
    assert w.sum() == pytest.approx(1.0, abs=1e-12) and np.all(w >= lo) and np.all(w <= hi)
    assert np.abs(w - OPTIMUM).sum() < 0.1
    random = sample_dirichlet_mixtures(PRIOR, 2000, seed=7)
    assert _quality(w[None])[0] > np.quantile(_quality(random), 0.99)
    worst = choose_mixture(reg, PRIOR, n_samples=5000, top_k=16, seed=6, maximize=False)
    assert _quality(worst[None])[0] < _quality(w[None])[0]


def test_influence_feature_and_comparison_rows() -> None:
    scores = np.array([1.0, 0.5, 0.0, -0.5, -1.0])
    train = sample_dirichlet_mixtures(PRIOR, 64, seed=8)
    reg = MixtureRegressor(influence=scores).fit(train, train @ scores)
    assert "w.s" in reg.feature_names
    rows = compare_mixtures({"prior": PRIOR, "optimum": OPTIMUM}, reg, scores)
    assert [r["name"] for r in rows] == ["prior", "optimum"]
    assert rows[0]["linear_objective"] == pytest.approx(PRIOR @ scores)
    assert rows[1]["predicted"] == pytest.approx(OPTIMUM @ scores, abs=0.02)
    assert compare_mixtures({"prior": PRIOR}, None, scores)[0]["predicted"] is None
    with pytest.raises(ConfigError):
        MixtureRegressor().predict(train)


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
