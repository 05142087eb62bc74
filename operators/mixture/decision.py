"""Decide what to publish from measured probe trainings (pure; the probes run in workflows/stages/validate.py).

Each candidate mixture was trained from the checkpoint with the same seeds; ``delta[name]`` holds its
target-loss change ΔL (nats per validation token; lower is better) per seed, in the same seed order.
A seed fixes each domain's example order for every candidate (``operators.training.blend``), so candidates are
compared as a randomised block design: the noise σ of a comparison is the residual std after removing
each candidate's and each seed's mean (degrees of freedom (C−1)(S−1)), and the standard error of a
difference of two candidates' means is σ·sqrt(2/S). Unequal seed counts fall back to the within-
candidate std pooled over candidates. A candidate is published only when it beats the reference by more
than ``margin`` standard errors; otherwise the reference itself is published and ``improvement_found``
is False.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from operators.errors import ConfigError


def pooled_std(delta: dict[str, np.ndarray]) -> tuple[float, int]:
    """Pooled within-candidate std over seeds and its degrees of freedom."""
    ss, df = 0.0, 0
    for values in delta.values():
        v = np.asarray(values, dtype=np.float64)
        if v.size > 1:
            ss += float(((v - v.mean()) ** 2).sum())
            df += v.size - 1
    return (math.sqrt(ss / df), df) if df > 0 else (0.0, 0)


def paired_std(delta: dict[str, np.ndarray]) -> tuple[float, int]:
    """Residual std of a candidates × seeds table after removing both main effects, and its dof.

    Falls back to :func:`pooled_std` when the candidates were not all measured on the same number of
    seeds (then they are not paired)."""
    sizes = {np.asarray(v).size for v in delta.values()}
    if len(delta) < 2 or len(sizes) != 1 or sizes.pop() < 2:
        return pooled_std(delta)
    x = np.array([np.asarray(v, dtype=np.float64) for v in delta.values()])
    resid = x - x.mean(axis=1, keepdims=True) - x.mean(axis=0, keepdims=True) + x.mean()
    df = (x.shape[0] - 1) * (x.shape[1] - 1)
    return math.sqrt(float((resid**2).sum()) / df), df


def decide(delta: dict[str, np.ndarray], reference: str, eligible: list[str], margin: float = 1.0,
           confidence: float = 0.9) -> dict:
    """Gains over the reference with t-intervals, the best eligible candidate and the publish decision."""
    if reference not in delta:
        raise ConfigError(f"validation: the reference {reference!r} was not measured")
    unknown = [e for e in eligible if e not in delta]
    if unknown:
        raise ConfigError(f"validation: eligible candidates {unknown} were not measured")
    sigma, df = paired_std(delta)
    if df == 0:
        raise ConfigError("validation needs at least 2 seeds per candidate to estimate seed noise")
    ref_mean = float(np.mean(delta[reference]))
    t = float(stats.t.ppf((1 + confidence) / 2, df)) if df > 0 else float("inf")
    rows = {}
    for name, values in delta.items():
        v = np.asarray(values, dtype=np.float64)
        se = sigma * math.sqrt(1.0 / v.size + 1.0 / len(delta[reference])) if name != reference else 0.0
        gain = ref_mean - float(v.mean())  # nats of validation loss saved vs the reference
        rows[name] = {"mean_delta": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
                      "gain": gain, "se": se, "ci": [gain - t * se, gain + t * se],
                      "z": gain / se if se > 0 else (0.0 if gain == 0 else math.copysign(1e9, gain))}  # finite for JSON
    best = min(eligible, key=lambda n: (rows[n]["mean_delta"], n))
    found = best != reference and rows[best]["z"] > margin
    return {"reference": reference, "best": best, "published": best if found else reference,
            "improvement_found": bool(found), "seed_std": sigma, "df": df, "margin": margin,
            "confidence": confidence, "candidates": rows}


def budget_pool_sizes(tokens_available: np.ndarray, tokens_next_stage: float, probe_examples: int,
                      max_pool: int) -> np.ndarray:
    """Examples per domain in a probe pool so a short probe repeats each domain as often as the stage.

    A domain holding fraction U_k/B of the stage's tokens gets about U_k/B · probe_examples unique
    examples (at least 1, at most ``max_pool``: beyond the probe's own draws there is no repetition).
    """
    u = np.asarray(tokens_available, dtype=np.float64)
    n = np.ceil(u / float(tokens_next_stage) * probe_examples)
    return np.clip(n, 1, min(max_pool, probe_examples)).astype(np.int64)


def predicted_vs_measured(predicted: dict[str, float], measured: dict[str, float]) -> dict:
    """Pearson and Spearman of predicted and measured gains over the common candidates (≥ 3)."""
    names = [n for n in predicted if n in measured]
    if len(names) < 3:
        return {"n": len(names), "pearson": None, "spearman": None}
    p = np.array([predicted[n] for n in names])
    m = np.array([measured[n] for n in names])
    if p.std() == 0 or m.std() == 0:
        return {"n": len(names), "pearson": None, "spearman": None}
    return {"n": len(names), "pearson": float(np.corrcoef(p, m)[0, 1]),
            "spearman": float(stats.spearmanr(p, m).statistic)}
