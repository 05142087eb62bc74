"""Compute accounting of a refresh in training-step equivalents (one optimizer step on one batch).

* featurize: one forward + backward per featurized example (corpus sample and targets) ≈ one example of
  a training step, so examples / batch_size steps;
* probes: every probe's optimizer steps, plus its reference-set evaluations (forward only ≈ 1/3 of a
  step per example);
* a RegMix-style grid: each of its mixtures trained for the whole stage on each seed.
"""

from __future__ import annotations

from operators.errors import ConfigError


def refresh_cost(featurized_examples: int, batch_size: int, probe_steps: int = 0, reference_evals: int = 0,
                 reference_examples: int = 0) -> dict[str, float]:
    """{featurize, probes, total} in training steps of ``batch_size`` examples."""
    if batch_size < 1 or min(featurized_examples, probe_steps, reference_evals, reference_examples) < 0:
        raise ConfigError("refresh_cost: counts must be >= 0 and batch_size >= 1")
    featurize = featurized_examples / batch_size
    probes = probe_steps + reference_evals * reference_examples / (3.0 * batch_size)
    return {"featurize": round(featurize, 1), "probes": round(probes, 1), "total": round(featurize + probes, 1),
            "batch_size": batch_size}


def grid_cost(mixtures: int, stage_steps: float, seeds: int = 1) -> float:
    """Steps of a grid that trains ``mixtures`` mixtures for the stage on ``seeds`` seeds each."""
    if mixtures < 0 or seeds < 1 or stage_steps <= 0:
        raise ConfigError("grid_cost: need mixtures >= 0, seeds >= 1, stage_steps > 0")
    return float(mixtures * stage_steps * seeds)
