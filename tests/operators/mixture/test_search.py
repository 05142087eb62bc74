"""Tests for operators.mixture.search (TiKMiX-M candidates and Algorithm 1 inside a box)."""

import numpy as np
import pytest

from operators.errors import ConfigError
from operators.mixture.search import (
    annealed_search,
    covered_box,
    in_box,
    label_noise,
    latin_hypercube_mixtures,
    paired_gain_examples,
    perturbation_box,
)

W_D = np.array([0.45, 0.25, 0.15, 0.1, 0.05])


def test_box_is_half_to_double_within_bounds() -> None:
    lo, hi = perturbation_box(W_D, np.full(5, 0.02), np.full(5, 0.6))
    np.testing.assert_allclose(lo, np.maximum(0.5 * W_D, 0.02))
    np.testing.assert_allclose(hi, np.minimum(2 * W_D, 0.6))
    with pytest.raises(ConfigError, match="scales"):
        perturbation_box(W_D, np.zeros(5), np.ones(5), low=1.5)


def test_latin_hypercube_candidates_stay_in_box_and_fill_it() -> None:
    lo, hi = perturbation_box(W_D, np.zeros(5), np.ones(5))
    W = latin_hypercube_mixtures(lo, hi, 256, seed=0)
    assert W.shape == (256, 5)
    np.testing.assert_allclose(W.sum(axis=1), 1.0, atol=1e-12)
    assert in_box(W, lo, hi).all()
    # they spread over the box: each domain covers most of its interval
    c_lo, c_hi = covered_box(W)
    assert np.all(c_hi - c_lo > 0.5 * (hi - lo))
    np.testing.assert_array_equal(W, latin_hypercube_mixtures(lo, hi, 256, seed=0))
    with pytest.raises(ConfigError, match="too tight"):
        latin_hypercube_mixtures(np.full(3, 0.4), np.full(3, 0.41), 4, seed=0, max_rounds=2)


def test_search_finds_interior_optimum_and_never_leaves_box() -> None:
    lo, hi = perturbation_box(W_D, np.zeros(5), np.ones(5))
    target = np.array([0.35, 0.3, 0.2, 0.1, 0.05])  # inside the box
    w, trace = annealed_search(lambda X: -((X - target) ** 2).sum(axis=1), W_D, lo, hi, seed=1)
    assert in_box(w, lo, hi)[0] and w.sum() == pytest.approx(1.0)
    assert np.abs(w - target).sum() < np.abs(W_D - target).sum() / 3
    assert trace[0]["round"] == 0 and len(trace) == 9


def test_search_is_restricted_when_the_optimum_lies_outside() -> None:
    lo, hi = perturbation_box(W_D, np.zeros(5), np.ones(5))
    corner = np.array([0.0, 0.0, 0.0, 0.0, 1.0])  # far outside the covered box
    w, _ = annealed_search(lambda X: -((X - corner) ** 2).sum(axis=1), W_D, lo, hi, seed=2)
    assert in_box(w, lo, hi)[0]
    assert w[4] > W_D[4]  # moved toward it as far as the box allows


def test_search_keeps_start_when_nothing_scores_better() -> None:
    lo, hi = perturbation_box(W_D, np.zeros(5), np.ones(5))
    w, _ = annealed_search(lambda X: -np.abs(X - W_D).sum(axis=1), W_D, lo, hi, seed=3)
    np.testing.assert_allclose(w, W_D)
    with pytest.raises(ConfigError, match="outside"):
        annealed_search(lambda X: X[:, 0], np.array([0.9, 0.1, 0, 0, 0]), lo, hi)


def test_label_noise_separates_shared_seed_effects() -> None:
    rng = np.random.default_rng(4)
    quality = np.linspace(0, 0.01, 20)[:, None]
    seed_effect = rng.normal(0, 0.05, (1, 3))  # shared by all mixtures: cancels in comparisons
    delta = quality + seed_effect + rng.normal(0, 0.002, (20, 3))
    noise = label_noise(delta)
    assert noise["seed_std"] > 0.02 and noise["interaction_std"] == pytest.approx(0.002, rel=0.3)
    assert noise["snr"] > 1.5
    assert label_noise(rng.normal(0, 0.01, (20, 3)))["snr"] < 1.5


def test_example_bootstrap_widens_the_error_when_examples_disagree() -> None:
    rng = np.random.default_rng(6)
    tokens = np.full(40, 100.0)
    # the candidate helps half of the examples and hurts the other half; seeds barely matter
    per_example = np.where(np.arange(40) < 20, 3.0, -2.0)
    ref = rng.normal(0, 0.01, (4, 40))
    cand = ref - per_example + rng.normal(0, 0.01, (4, 40))
    row = paired_gain_examples(ref, cand, tokens, n_boot=500, seed=0)
    assert row["gain"] == pytest.approx(0.005, abs=1e-3)
    assert row["se"] > 5 * row["se_seeds"] and row["z"] < 2  # not significant once examples are resampled
    consistent = paired_gain_examples(ref, ref - 0.5 + rng.normal(0, 0.01, (4, 40)), tokens, n_boot=500)
    assert consistent["z"] > 10
    assert consistent["gain"] == pytest.approx(0.5 / 100, rel=0.01)  # nats saved per token
    assert paired_gain_examples(ref, ref, tokens)["z"] == 0.0
