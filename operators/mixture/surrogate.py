"""Surrogate proposals: fit every probe result measured so far, propose the mixtures it predicts best.

TiKMiX-M / RegMix style: a regressor from mixture weights (plus the influence direction w·s) to the
measured gain (:class:`operators.mixture.regression.MixtureRegressor`, ridge on full-rank quadratic
mixture features, bootstrap refits for a prediction std). Candidates are drawn around the best
measured mixtures (Dirichlet, several concentrations) and between pairs of them, restricted to the
bounds and to a margin around the region the measured mixtures cover (a quadratic fit is not trusted
far outside it), scored by ``mean − kappa·std``, and the top ones at a minimum L1 distance from each
other and from every measured mixture are returned. No proposals when the fit has no held-out skill.
"""

from __future__ import annotations

import numpy as np

from operators.errors import ConfigError
from operators.mixture.explore import far_enough
from operators.mixture.regression import MixtureRegressor, sample_dirichlet_mixtures


def _pool(W: np.ndarray, y: np.ndarray, lower: np.ndarray, upper: np.ndarray, samples: int,
          seed: int) -> np.ndarray:
    """Dirichlet draws around the 3 best measured mixtures, plus random convex pairs of the top 5."""
    k = W.shape[1]
    top = W[np.argsort(-y)[: min(5, len(y))]]
    per = max(1, samples // (2 * min(3, len(top))))
    rows = [sample_dirichlet_mixtures(np.maximum(w, 1e-3), per, seed + i, lower, upper,
                                      strengths=np.array([2.0, 4.0, 8.0, 16.0]) * k)
            for i, w in enumerate(top[:3])]
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(top), (2, samples // 2))
    t = rng.random((samples // 2, 1))
    rows.append(t * top[a] + (1 - t) * top[b])
    return np.concatenate(rows)


def propose(W: np.ndarray, y: np.ndarray, scores: np.ndarray | None, lower: np.ndarray, upper: np.ndarray,
            n: int, seed: int = 0, kappa: float = 0.5, min_cv_r2: float = 0.0, min_l1: float = 0.1,
            expand: float = 0.1, samples: int = 4096, domain_names: list[str] | None = None
            ) -> tuple[np.ndarray, dict]:
    """Up to ``n`` new mixtures the surrogate predicts best, and a report (module docstring).

    ``W`` (m, K) measured mixtures, ``y`` (m,) their measured gains (higher is better), ``scores`` the
    influence scores (the w·s feature). ``expand``: how far (in weight) beyond the measured per-domain
    range proposals may go."""
    W = np.atleast_2d(np.asarray(W, dtype=np.float64))
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if W.shape[0] != y.size:
        raise ConfigError(f"surrogate: {W.shape[0]} mixtures but {y.size} labels")
    lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    if n < 1 or y.size < 4:
        return np.zeros((0, W.shape[1])), {"fitted": False, "reason": f"{y.size} labelled mixtures (< 4)"}
    reg = MixtureRegressor(influence=scores, domain_names=domain_names, seed=seed).fit(W, y)
    reg.bootstrap(48, seed)
    info = reg.describe(top=6)
    report = {"regressor": info, "kappa": kappa, "min_cv_r2": min_cv_r2}
    if not info["cv_r2"] > min_cv_r2:
        report["reason"] = (f"leave-one-out R² {info['cv_r2']:.3f} <= {min_cv_r2}: the fit cannot rank "
                            "mixtures, no proposals")
        return np.zeros((0, W.shape[1])), report
    lo = np.maximum(lower, W.min(axis=0) - expand)
    hi = np.minimum(upper, W.max(axis=0) + expand)
    pool = _pool(W, y, lower, upper, samples, seed)
    pool = pool[np.all((pool >= lo - 1e-12) & (pool <= hi + 1e-12), axis=1)]
    if pool.shape[0] == 0:
        report["reason"] = "no sampled mixture inside the covered region"
        return np.zeros((0, W.shape[1])), report
    mean, std = reg.predict_std(pool)
    order = np.argsort(-(mean - kappa * std))
    chosen = far_enough(pool[order[: max(64, 8 * n)]], W, min_l1)[:n]
    pm, ps = reg.predict_std(chosen) if len(chosen) else (np.zeros(0), np.zeros(0))
    report.update({"proposed": len(chosen), "predicted_mean": pm.tolist(), "predicted_std": ps.tolist(),
                   "best_measured": float(y.max()),
                   "reason": f"{len(chosen)} proposals (leave-one-out R² {info['cv_r2']:.3f})"})
    return chosen, report


def proposal_intervals(W: np.ndarray, gain_reps: np.ndarray, scores: np.ndarray | None, lower: np.ndarray,
                       upper: np.ndarray, proposals: np.ndarray, confidence: float = 0.9, seed: int = 0,
                       **propose_kw) -> dict:
    """Where each of ``proposals`` (p, K) lands when the measurements behind it are redrawn: for each
    replicate row of ``gain_reps`` (B, m) (the gains of ``W`` re-estimated on resampled seeds and
    examples) the surrogate is refitted and proposes again, and each original proposal is matched to the
    nearest (L1) new one. Returns per proposal the percentile interval of its weights (``low``/``high``,
    (p, K)), the median L1 shift, and how many replicates proposed at all (a refit without held-out skill
    proposes nothing and is left out)."""
    proposals = np.atleast_2d(np.asarray(proposals, dtype=np.float64))
    gain_reps = np.atleast_2d(gain_reps)
    n = proposals.shape[0]
    matched: list[np.ndarray] = []
    for b, y in enumerate(gain_reps):
        X, _ = propose(W, y, scores, lower, upper, n, seed=seed + b, **propose_kw)
        if len(X):
            dist = np.abs(proposals[:, None, :] - X[None, :, :]).sum(axis=2)  # (p, q)
            matched.append(X[dist.argmin(axis=1)])
    if not matched:
        return {"replicates": 0, "of": len(gain_reps)}
    M = np.stack(matched)  # (R, p, K)
    a = (1 - confidence) / 2
    return {"replicates": len(matched), "of": len(gain_reps), "confidence": confidence,
            "low": np.quantile(M, a, axis=0), "high": np.quantile(M, 1 - a, axis=0),
            "median_l1_shift": np.median(np.abs(M - proposals[None]).sum(axis=2), axis=0)}
