"""From probe horizon to stage horizon: extrapolate a probe's loss trajectory to the stage's length.

A validation probe trains ``steps`` steps; the next stage trains ``stage_steps`` (its token budget over
the probe's tokens per step). The gain of one mixture over another is not constant in t: a domain the
model has already learned saturates, an under-learned one keeps paying. Each probe therefore measures
the target loss at a few points t_1 < … < t_P of its trajectory and the change is modelled as
log-linear in t, ``ΔL(t) = a + b·log t`` (least squares over the points). The value at the stage's
length is a fixed linear combination ``Σ_p c_p ΔL(t_p)`` of the measured points
(:func:`extrapolation_weights`), so it applies per seed and the usual paired t-interval
(operators/mixture/decision.py) gives its CI; the noise it adds shows up there. The horizon is bounded:
it never extrapolates beyond ``max_ratio`` × the longest probe. :func:`stage_interval` brackets the
stage with three horizon models (trend continues, stops, reverses) over bootstrap replicates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from operators.errors import ConfigError


def probe_points(steps: int, fractions: Sequence[float]) -> list[int]:
    """Sorted unique step counts ``round(f·steps)`` (>= 1) for the fractions, always ending at ``steps``."""
    if steps < 1:
        raise ConfigError(f"probe steps must be >= 1, got {steps}")
    if any(not 0.0 < f <= 1.0 for f in fractions):
        raise ConfigError(f"horizon fractions must lie in (0, 1], got {list(fractions)}")
    return sorted({max(1, round(f * steps)) for f in fractions} | {steps})


def stage_steps(tokens_next_stage: float, batch_size: int, max_length: int) -> float:
    """Steps of the next stage in probe units: its tokens over the probe's tokens per step."""
    if tokens_next_stage <= 0 or batch_size < 1 or max_length < 1:
        raise ConfigError(f"stage steps need tokens > 0, batch_size and max_length >= 1; got "
                          f"{tokens_next_stage}, {batch_size}, {max_length}")
    return float(tokens_next_stage) / (batch_size * max_length)


def extrapolation_weights(points: Sequence[int], horizon: float, max_ratio: float = 16.0
                          ) -> tuple[np.ndarray, float]:
    """(c, used horizon): weights with ``ΔL(T) ≈ Σ_p c_p ΔL(t_p)`` under ΔL(t) = a + b·log t.

    T = min(horizon, max_ratio · t_P); with one point (or T <= t_P) it is that last point unchanged
    (c = [0, …, 0, 1]): no extrapolation backwards."""
    t = np.asarray(points, dtype=np.float64)
    if t.size == 0 or np.any(t < 1) or np.any(np.diff(t) <= 0):
        raise ConfigError(f"probe points must be increasing and >= 1, got {list(points)}")
    if max_ratio < 1:
        raise ConfigError(f"max_ratio must be >= 1, got {max_ratio}")
    used = float(min(max(horizon, t[-1]), max_ratio * t[-1]))
    c = np.zeros(t.size)
    if t.size == 1 or used <= t[-1]:
        c[-1] = 1.0
        return c, float(t[-1]) if used <= t[-1] else used
    x = np.log(t)
    X = np.column_stack([np.ones_like(x), x])
    # a, b = pinv(X) @ ΔL; ΔL(T) = [1, log T] @ pinv(X) @ ΔL
    c = np.array([1.0, math.log(used)]) @ np.linalg.pinv(X)
    return c, used


def extrapolate(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Apply :func:`extrapolation_weights` over the last axis (the probe points) of ``values``."""
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if v.shape[-1] != w.size:
        raise ConfigError(f"values have {v.shape[-1]} probe points, weights {w.size}")
    return v @ w


def stage_interval(gains: np.ndarray, weights: np.ndarray, confidence: float = 0.9) -> dict:
    """Stage-horizon gain and interval from bootstrap replicates of a gain trajectory.

    ``gains`` (B, P): replicate gains (seeds AND reference examples resampled) at the probe points. A
    gain measured over a short probe may keep its trend over the stage, stop changing, or shrink as the
    reference catches up; three horizon models bracket the stage: ``log_linear``
    (:func:`extrapolation_weights`), ``flat`` (the last point) and ``reversed`` (the log-linear change
    mirrored: 2·flat − log_linear). The point estimate leans on the measured trend: the mean of flat and
    log-linear; the interval runs from the
    lower quantile of the smallest to the upper quantile of the largest, so it holds both the
    statistical noise (which seeds, which target examples) and the horizon-model uncertainty."""
    g = np.asarray(gains, dtype=np.float64)
    flat, loglin = g[:, -1], extrapolate(g, weights)
    mirrored = 2.0 * flat - loglin
    models = np.stack([flat, loglin, mirrored])
    q = (1 - confidence) / 2
    low = float(np.quantile(models.min(axis=0), q))
    high = float(np.quantile(models.max(axis=0), 1 - q))
    return {"gain": float(0.5 * (flat.mean() + loglin.mean())), "ci": [low, high], "flat": float(flat.mean()),
            "log_linear": float(loglin.mean()), "reversed": float(mirrored.mean())}
