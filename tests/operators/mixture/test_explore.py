"""Tests for operators.mixture.explore (exploration candidates away from the influence answer)."""

import numpy as np
import pytest

from operators.errors import ConfigError
from operators.mixture.explore import dirichlet_around, far_enough, heavy_mixture, positive_evidence

REF = np.full(5, 0.2)
LO, HI = np.full(5, 0.02), np.full(5, 0.6)


def test_dirichlet_around_is_seeded_bounded_and_spread() -> None:
    W = dirichlet_around(REF, 40, seed=3, lower=LO, upper=HI)
    assert W.shape == (40, 5)
    np.testing.assert_allclose(W.sum(axis=1), 1.0, atol=1e-12)
    assert np.all((W >= LO - 1e-12) & (W <= HI + 1e-12))
    np.testing.assert_array_equal(W, dirichlet_around(REF, 40, seed=3, lower=LO, upper=HI))
    assert not np.array_equal(W, dirichlet_around(REF, 40, seed=4, lower=LO, upper=HI))
    assert np.abs(W - REF).sum(axis=1).mean() > 0.3  # far from the reference on average, not a jitter
    assert dirichlet_around(REF, 0, 0, LO, HI).shape == (0, 5)
    with pytest.raises(ConfigError, match="concentrations"):
        dirichlet_around(REF, 3, 0, LO, HI, concentrations=[0.0])


def test_heavy_mixture_puts_share_on_one_domain_and_rest_by_reference() -> None:
    ref = np.array([0.4, 0.3, 0.1, 0.1, 0.1])
    w = heavy_mixture(ref, 2, 0.65, LO, HI)
    assert w[2] == pytest.approx(0.6)  # capped by the upper bound
    np.testing.assert_allclose(w.sum(), 1.0)
    rest = np.delete(w, 2)
    np.testing.assert_allclose(rest / rest.sum(), np.delete(ref, 2) / np.delete(ref, 2).sum(), atol=1e-9)
    w2 = heavy_mixture(ref, 0, 0.65, np.zeros(5), np.ones(5))
    assert w2[0] == pytest.approx(0.65)
    with pytest.raises(ConfigError, match="share"):
        heavy_mixture(ref, 0, 1.2, LO, HI)


def test_positive_evidence_counts_ci_upper_ends() -> None:
    s = np.array([0.5, -0.1, -0.2, 0.0])
    np.testing.assert_array_equal(positive_evidence(s), [True, False, False, False])
    np.testing.assert_array_equal(positive_evidence(s, np.array([0.9, 0.05, -0.01, 0.0])),
                                  [True, True, False, False])


def test_far_enough_drops_near_duplicates() -> None:
    measured = np.array([[0.5, 0.5, 0.0]])
    W = np.array([[0.52, 0.48, 0.0], [0.2, 0.3, 0.5], [0.21, 0.3, 0.49], [0.0, 0.0, 1.0]])
    out = far_enough(W, measured, 0.1)
    np.testing.assert_array_equal(out, W[[1, 3]])
