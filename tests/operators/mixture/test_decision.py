"""Publish decision from measured probes: pooled noise, margins, budget-scaled pools."""

from __future__ import annotations

import numpy as np
import pytest

from operators.errors import ConfigError
from operators.mixture.decision import (
    budget_pool_sizes,
    decide,
    paired_std,
    pooled_std,
    predicted_vs_measured,
)


def test_pooled_std_over_candidates() -> None:
    sigma, df = pooled_std({"a": np.array([0.0, 2.0]), "b": np.array([1.0, 1.0, 1.0])})
    assert df == 3 and sigma == pytest.approx(np.sqrt(2.0 / 3.0))


def test_clear_winner_is_published_with_a_positive_interval() -> None:
    rng = np.random.default_rng(0)
    delta = {"reference": -0.30 + 0.01 * rng.normal(size=3), "solved": -0.40 + 0.01 * rng.normal(size=3),
             "other": -0.32 + 0.01 * rng.normal(size=3)}
    d = decide(delta, "reference", ["reference", "solved", "other"])
    assert d["published"] == "solved" and d["improvement_found"]
    row = d["candidates"]["solved"]
    assert row["ci"][0] > 0 and row["gain"] == pytest.approx(0.1, abs=0.03)


def test_noise_level_difference_publishes_the_reference() -> None:
    # per seed, solved is better by 0.02 and worse by 0.015: the paired difference is noise
    delta = {"reference": np.array([-0.30, -0.32]), "solved": np.array([-0.32, -0.305])}
    d = decide(delta, "reference", ["reference", "solved"], margin=1.0)
    assert d["best"] == "solved" and d["published"] == "reference" and not d["improvement_found"]


def test_paired_seeds_separate_a_consistent_small_gain() -> None:
    """Seeds shift every candidate alike (common random numbers): the block design removes that shift,
    so a gain of 0.01 that holds on every seed is found although the seed-to-seed spread is 0.05."""
    rng = np.random.default_rng(3)
    seed_shift = 0.05 * rng.normal(size=4)
    delta = {"reference": -0.30 + seed_shift + 0.001 * rng.normal(size=4),
             "solved": -0.31 + seed_shift + 0.001 * rng.normal(size=4),
             "other": -0.29 + seed_shift + 0.001 * rng.normal(size=4)}
    sigma, df = paired_std(delta)
    assert df == 6 and sigma < 0.003 < pooled_std(delta)[0]
    d = decide(delta, "reference", list(delta))
    assert d["published"] == "solved" and d["candidates"]["solved"]["ci"][0] > 0
    # unpaired: the same gain is lost in the seed spread
    unpaired = {k: v + 0.05 * rng.normal(size=4) for k, v in delta.items()}
    unpaired["solved"] = unpaired["solved"][:3]  # unequal seed counts: no pairing, pooled std
    assert paired_std(unpaired) == pooled_std(unpaired)


def test_ineligible_candidates_are_not_published() -> None:
    delta = {"reference": np.array([-0.3, -0.3]), "baseline:dsir": np.array([-0.6, -0.61])}
    d = decide(delta, "reference", ["reference"])
    assert d["published"] == "reference"
    with pytest.raises(ConfigError):
        decide(delta, "missing", ["reference"])
    with pytest.raises(ConfigError, match="2 seeds"):
        decide({"reference": np.array([-0.3]), "a": np.array([-0.4])}, "reference", ["a"])


def test_budget_pool_sizes_scale_with_unique_share() -> None:
    sizes = budget_pool_sizes(np.array([1e3, 1e5, 1e9]), 1e5, probe_examples=128, max_pool=96)
    assert sizes.tolist() == [2, 96, 96]


def test_predicted_vs_measured_needs_three_points() -> None:
    assert predicted_vs_measured({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.0})["pearson"] is None
    out = predicted_vs_measured({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 0.1, "b": 0.25, "c": 0.3})
    assert out["spearman"] == pytest.approx(1.0) and out["pearson"] > 0.9
