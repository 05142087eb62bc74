"""Tests for operators.mixture.horizon: probe trajectories extrapolated to the stage length."""

import math

import numpy as np
import pytest

from operators.errors import ConfigError
from operators.mixture.horizon import extrapolate, extrapolation_weights, probe_points, stage_steps


def test_probe_points_end_at_the_probe_length() -> None:
    assert probe_points(16, [0.25, 0.5, 1.0]) == [4, 8, 16]
    assert probe_points(3, [0.1, 0.5]) == [1, 2, 3]
    with pytest.raises(ConfigError, match="fractions"):
        probe_points(16, [0.0])


def test_stage_steps_in_probe_units() -> None:
    assert stage_steps(163840, 8, 128) == 160.0
    with pytest.raises(ConfigError):
        stage_steps(0, 8, 128)


def test_log_linear_trajectories_are_extrapolated_exactly() -> None:
    pts = [4, 8, 16]
    c, used = extrapolation_weights(pts, 160.0)
    assert used == 160.0 and c.sum() == pytest.approx(1.0)  # a constant stays constant
    a, b = -0.02, -0.015
    traj = np.array([a + b * math.log(t) for t in pts])
    assert extrapolate(traj, c) == pytest.approx(a + b * math.log(160))
    # a saturating domain (flat after the probe) vs one that keeps paying: the ranking flips at the stage
    saturating = np.array([-0.10, -0.11, -0.115])
    learning = np.array([-0.04, -0.07, -0.10])
    assert saturating[-1] < learning[-1] and extrapolate(learning, c) < extrapolate(saturating, c)
    # per-seed rows: applied over the last axis
    np.testing.assert_allclose(extrapolate(np.stack([traj, traj]), c), [a + b * math.log(160)] * 2)


def test_extrapolation_is_bounded_and_never_backwards() -> None:
    c, used = extrapolation_weights([8, 16], 10_000.0, max_ratio=4.0)
    assert used == 64.0
    c, used = extrapolation_weights([8, 16], 10.0)
    np.testing.assert_array_equal(c, [0.0, 1.0])
    assert used == 16.0
    with pytest.raises(ConfigError, match="increasing"):
        extrapolation_weights([8, 8], 100.0)


def test_stage_interval_spans_flat_and_log_linear_models() -> None:
    from operators.mixture.horizon import stage_interval

    c, _ = extrapolation_weights([4, 8, 16], 160.0)
    rng = np.random.default_rng(0)
    growing = np.array([0.02, 0.04, 0.06]) + rng.normal(0, 0.002, (500, 3))
    out = stage_interval(growing, c)
    assert out["flat"] == pytest.approx(0.06, abs=1e-3) and out["log_linear"] > 0.1
    assert out["reversed"] == pytest.approx(2 * out["flat"] - out["log_linear"])
    assert out["ci"][0] < out["reversed"] < out["flat"] < out["log_linear"] < out["ci"][1]
    assert out["gain"] == pytest.approx(0.5 * (out["flat"] + out["log_linear"]))
    # a flat trajectory: both models agree and the interval is only the noise
    flat = np.array([0.05, 0.05, 0.05]) + rng.normal(0, 0.002, (500, 3))
    tight = stage_interval(flat, c)
    assert tight["ci"][0] < 0.05 < tight["ci"][1] and tight["ci"][1] - tight["ci"][0] < 0.05
