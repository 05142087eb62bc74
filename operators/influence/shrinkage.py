"""Evidence-weighted domain influence: empirical-Bayes shrinkage toward the pooled mean.

Each domain's group influence GI[k, v] is a mean over its sampled examples, so it carries sampling noise
with standard error se[k, v] (from the Poisson bootstrap of the aggregation). Per target v the model is
GI[k] ~ N(θ_k, se_k²) with θ_k ~ N(μ, τ²); the spread τ² of the true effects is estimated by the method
of moments (DerSimonian–Laird: observed spread minus noise, floored at 0; the noise allowance is the 95%
quantile of Cochran's Q under equality rather than its mean, so noise alone passes for signal in at
most 5% of draws), μ is the
precision-weighted mean, and each domain is pulled toward μ by se_k² / (se_k² + τ²):

    θ̂_k = μ + τ² / (τ² + se_k²) · (GI[k] − μ)

Domains whose differences are within noise collapse onto the pooled mean (the solver then stays at its
prior); a well-measured, clearly different domain keeps its value. A small domain with a noisy mean
is pulled harder than a large one with the same mean.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import chi2

from operators.errors import ConfigError


def between_domain_variance(gi: np.ndarray, se: np.ndarray, level: float | None = None) -> np.ndarray:
    """τ² per target (V,) for (K, V) effects and standard errors: DerSimonian–Laird, floored at 0.

    With ``level`` (e.g. 0.9), Cochran's Q is reduced by its ``level`` quantile under "all domains are
    equal" (χ² with K−1 degrees of freedom) instead of by its mean K−1: the spread counts as real only
    where Q rejects equality at that level, so pure noise gives τ² = 0 in ``level`` of draws (DL alone
    gives τ² > 0 in about 40% of null draws with 5 domains).
    """
    w = 1.0 / np.maximum(se, 1e-300) ** 2
    mu = (w * gi).sum(axis=0) / w.sum(axis=0)
    q = (w * (gi - mu) ** 2).sum(axis=0)
    k = gi.shape[0]
    c = w.sum(axis=0) - (w**2).sum(axis=0) / w.sum(axis=0)
    expected = float(chi2.ppf(level, k - 1)) if level is not None else float(k - 1)
    return np.maximum(0.0, (q - expected) / np.maximum(c, 1e-300))


#: Q must exceed its 95% quantile under equality before any spread between domains is believed.
EVIDENCE_LEVEL = 0.95


def shrink(gi: np.ndarray, se: np.ndarray, level: float | None = EVIDENCE_LEVEL) -> tuple[np.ndarray, dict]:
    """(K, V) shrunk group influence, and per-target τ, pooled mean and per-entry shrinkage factors.

    ``factor[k, v]`` = τ²/(τ² + se²) is the share of the domain's own deviation that is kept (1: none
    of it is noise; 0: indistinguishable from the pool). A stack (..., K, V) of replicates is shrunk
    replicate by replicate with the same ``se``.
    """
    gi = np.asarray(gi, dtype=np.float64)
    se = np.asarray(se, dtype=np.float64)
    if gi.ndim > 2:
        out = np.stack([shrink(g, se, level)[0] for g in gi.reshape(-1, *gi.shape[-2:])])
        return out.reshape(gi.shape), {}
    if gi.shape != se.shape or gi.ndim != 2:
        raise ConfigError(f"shrink: influence {gi.shape} and standard errors {se.shape} must both be (K, V)")
    if not np.all(np.isfinite(se)) or np.any(se < 0):
        raise ConfigError("shrink: standard errors must be finite and >= 0")
    if gi.shape[0] < 3 or np.any(se.max(axis=0) <= 0):
        return gi.copy(), {"applied": False, "reason": "needs >= 3 domains and nonzero standard errors"}
    tau2 = between_domain_variance(gi, se, level)
    w = 1.0 / (se**2 + tau2)
    mu = (w * gi).sum(axis=0) / w.sum(axis=0)
    factor = np.where(tau2 > 0, tau2 / (tau2 + se**2), 0.0)
    shrunk = mu + factor * (gi - mu)
    return shrunk, {"applied": True, "tau": np.sqrt(tau2).tolist(), "pooled_mean": mu.tolist(),
                    "factor": factor.tolist()}
