"""TiKMiX-D as published (arXiv:2508.17677 v1, Eq. 9–11).

S ∈ ℝ^{n×m} is the influence of m domains on n validation tasks (benefit sign). For a mixture w,
P = S·w and each task is normalised by its best domain, P̂_i = P_i / (max_j S_ij + ε) (Eq. 9). The
mixture minimises

    L(w) = α·std(P̂) − β·Σ_i P̂_i − γ·H(w),      H(w) = −Σ_j w_j log w_j          (Eq. 10)

subject to Σw = 1, w ≥ 0 and the Pareto constraint S·w ≥ S·w_prior (Eq. 11), solved by SLSQP from
uniform with α = β = γ = 1. Deviations, all reported: a task whose best domain is harmful
(max_j S_ij ≤ 0) is divided by |max_j S_ij| so that the sign of its gain is kept (the paper is silent);
optional box/reuse bounds replace w ≥ 0; when the Pareto constraint cannot be met inside those
bounds it is dropped and ``pareto_dropped`` says so.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from operators.errors import ConfigError
from operators.mixture.simplex import project_bounded_simplex

EPS = 1e-8


def normalised_task_matrix(S: np.ndarray) -> np.ndarray:
    """S_ij / (|max_j S_ij| + ε) row by row (Eq. 9 with the sign of a harmful best domain kept)."""
    S = np.asarray(S, dtype=np.float64)
    top = S.max(axis=1, keepdims=True)
    return S / (np.abs(top) + EPS)


def paper_objective(w: np.ndarray, S_hat: np.ndarray, alpha: float, beta: float, gamma: float) -> float:
    p = S_hat @ w
    wp = np.clip(w, 1e-300, None)
    return float(alpha * p.std() - beta * p.sum() + gamma * np.sum(wp * np.log(wp)))


def solve_tikmix_paper(S: np.ndarray, w_prior: np.ndarray, lower: np.ndarray | None = None,
                       upper: np.ndarray | None = None, alpha: float = 1.0, beta: float = 1.0,
                       gamma: float = 1.0, pareto: bool = True, max_iter: int = 500) -> tuple[np.ndarray, dict]:
    """SLSQP from uniform on Eq. 10–11; returns (weights, info)."""
    S = np.asarray(S, dtype=np.float64)
    if S.ndim != 2 or not np.all(np.isfinite(S)):
        raise ConfigError(f"TiKMiX paper solver: S must be a finite (tasks, domains) matrix, got {S.shape}")
    m = S.shape[1]
    lo = np.zeros(m) if lower is None else np.asarray(lower, dtype=np.float64)
    hi = np.ones(m) if upper is None else np.asarray(upper, dtype=np.float64)
    prior = np.asarray(w_prior, dtype=np.float64)
    S_hat = normalised_task_matrix(S)
    floor = S_hat @ prior
    start = project_bounded_simplex(np.full(m, 1.0 / m), lo, hi)
    fun = lambda w: paper_objective(w, S_hat, alpha, beta, gamma)  # noqa: E731
    cons = [{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}]
    pareto_cons = {"type": "ineq", "fun": lambda w: S_hat @ w - floor, "jac": lambda w: S_hat}
    bounds = list(zip(lo.tolist(), hi.tolist()))
    info: dict = {"alpha": alpha, "beta": beta, "gamma": gamma, "pareto": pareto, "pareto_dropped": False}
    res = minimize(fun, start, method="SLSQP", bounds=bounds,
                   constraints=cons + ([pareto_cons] if pareto else []),
                   options={"maxiter": max_iter, "ftol": 1e-12})
    if pareto and (not res.success or np.min(S_hat @ res.x - floor) < -1e-6):
        info["pareto_dropped"] = True
        res = minimize(fun, start, method="SLSQP", bounds=bounds, constraints=cons,
                       options={"maxiter": max_iter, "ftol": 1e-12})
    w = project_bounded_simplex(np.clip(res.x, lo, hi), lo, hi)
    info.update({"converged": bool(res.success), "message": str(res.message), "iterations": int(res.nit),
                 "objective": paper_objective(w, S_hat, alpha, beta, gamma),
                 "task_gains_normalised": (S_hat @ w).tolist(),
                 "pareto_slack_min": float(np.min(S_hat @ w - floor))})
    return w, info
