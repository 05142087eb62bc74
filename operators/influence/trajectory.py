"""Multi-step domain influence, measured along probe trajectories and carried to the stage horizon.

First-order group influence ranks domains by the loss drop of the next small step at the checkpoint. Over
a whole stage that ranking can be wrong: a domain the model has already learned stops paying after a few
steps, one it has not learned keeps paying. Validation already trains many mixtures for a few steps and
records each target's loss at several points of every probe, so the domains' effects at those points can
be read off directly.

Per probe point p and target v, the measured loss change of mixture m (per seed s) is modelled as linear in
its weights (a Scheffé mixture model; the weights sum to 1, so the intercept is the pool's mean effect):

    ΔL[m, s, p, v] ≈ α[p, v] + Σ_k W[m, k] · δ[k, p, v]

fitted by ridge regression over every (mixture, seed) row (ridge on δ only; it pulls the domains toward
their common effect when the mixtures do not separate them). Because the weights sum to 1, only the
differences between domains are identified: δ is reported relative to the domains' mean effect, which is
all a mixture solver needs (a common shift changes every mixture's score alike). The effect at the stage horizon is the same
linear extrapolation as the gains' (operators/mixture/horizon.py): ``δ_T = Σ_p c_p δ_p``. Its standard error
comes from a bootstrap over the mixtures (rows of one mixture stay together), so misfit and seed noise are
both in it. Influence is the loss DROP: ``−δ_T`` (higher = better), the sign convention of group
influence, so a solver takes it in place of the first-order matrix.
"""

from __future__ import annotations

import numpy as np

from operators.errors import ConfigError

__all__ = ["trajectory_influence"]


def _fit(X: np.ndarray, Y: np.ndarray, ridge: float) -> np.ndarray:
    """(K, Q) ridge coefficients of Y (n, Q) on X (n, K) with a free intercept (penalty on the centred X)."""
    Xc = X - X.mean(axis=0)
    Yc = Y - Y.mean(axis=0)
    gram = Xc.T @ Xc
    lam = ridge * max(float(np.trace(gram)) / gram.shape[0], 1e-12)
    return np.linalg.solve(gram + lam * np.eye(gram.shape[0]), Xc.T @ Yc)


def trajectory_influence(W: np.ndarray, delta: np.ndarray, coef: np.ndarray, *, ridge: float = 0.05,
                         n_boot: int = 200, seed: int = 0) -> dict:
    """Domain effects measured along probe trajectories, at the stage horizon (module docstring).

    ``W`` (M, K) probed mixtures; ``delta`` (M, S, P, V) each target's per-token loss change per mixture,
    seed and probe point; ``coef`` (P,) the stage-horizon extrapolation weights. Returns ``gi`` (K, V):
    the loss drop per unit weight at the stage horizon (higher = better), ``se`` (K, V) its bootstrap
    standard error, ``at_points`` (P, K, V) the drops at the probe points, and ``r2`` (P, V) the fit at each
    point over the seed-mean losses."""
    W = np.asarray(W, dtype=np.float64)
    d = np.asarray(delta, dtype=np.float64)
    c = np.asarray(coef, dtype=np.float64).reshape(-1)
    if W.ndim != 2 or d.ndim != 4 or d.shape[0] != W.shape[0] or d.shape[2] != c.size:
        raise ConfigError(f"trajectory_influence: mixtures {W.shape}, losses {d.shape} (M, S, P, V) and "
                          f"{c.size} extrapolation weights do not fit together")
    M, S, P, V = d.shape
    K = W.shape[1]
    if M < 3:
        raise ConfigError(f"trajectory_influence needs at least 3 probed mixtures, got {M}")
    if not np.all(np.isfinite(d)):
        raise ConfigError("trajectory_influence: probe losses must be finite")

    def effects(rows: np.ndarray) -> np.ndarray:  # (P, K, V) loss drops fitted on mixtures ``rows``
        X = np.repeat(W[rows], S, axis=0)  # (len(rows)·S, K)
        Y = d[rows].reshape(len(rows) * S, P * V)
        return -_fit(X, Y, ridge).reshape(K, P, V).transpose(1, 0, 2)

    at_points = effects(np.arange(M))
    gi = np.einsum("p,pkv->kv", c, at_points)
    rng = np.random.default_rng(seed)
    reps = np.array([np.einsum("p,pkv->kv", c, effects(rng.integers(0, M, M))) for _ in range(n_boot)])
    se = reps.std(axis=0, ddof=1)
    mean_loss = d.mean(axis=1)  # (M, P, V)
    fitted = mean_loss.mean(axis=0) - np.einsum("mk,pkv->mpv", W - W.mean(axis=0), at_points)
    ss_res = ((mean_loss - fitted) ** 2).sum(axis=0)
    ss_tot = ((mean_loss - mean_loss.mean(axis=0)) ** 2).sum(axis=0)
    r2 = 1.0 - ss_res / np.maximum(ss_tot, 1e-300)
    return {"gi": gi, "se": se, "at_points": at_points, "r2": r2}


def anchor_to_first_order(gi: np.ndarray, se: np.ndarray, first_order: np.ndarray) -> tuple[np.ndarray, dict]:
    """Shrink measured multi-step effects toward what first-order influence predicts for them.

    Per target, the measured effects (K,) are regressed on the first-order influence (K,) with weights
    1/se² (a random-effects meta-regression: θ_k ~ N(a + b·first_k, τ²)); τ² is the method-of-moments
    estimate of the spread around that line beyond noise, and each domain keeps the share τ²/(τ² + se_k²)
    of its deviation from the line. A domain whose probe effect is noisy falls back to what first order
    says about it (rescaled to the probes' units); one whose probes clearly disagree with first order keeps
    its measured effect. Returns the (K, V) posterior means and, per target, a, b, τ and the kept shares."""
    y = np.asarray(gi, dtype=np.float64)
    s = np.asarray(se, dtype=np.float64)
    x = np.asarray(first_order, dtype=np.float64)
    if not (y.shape == s.shape == x.shape) or y.ndim != 2:
        raise ConfigError(f"anchor_to_first_order: effects {y.shape}, errors {s.shape} and first-order "
                          f"influence {x.shape} must all be (K, V)")
    K, V = y.shape
    out = np.empty_like(y)
    info: dict = {"a": [], "b": [], "tau": [], "kept": []}
    for v in range(V):
        w = 1.0 / np.maximum(s[:, v], 1e-12) ** 2
        X = np.column_stack([np.ones(K), x[:, v]])
        XtW = X.T * w
        A = XtW @ X + 1e-12 * np.eye(2)
        coef = np.linalg.solve(A, XtW @ y[:, v])
        resid = y[:, v] - X @ coef
        q = float((w * resid**2).sum())
        c = float(w.sum() - np.trace(np.linalg.solve(A, (X.T * w**2) @ X)))
        tau2 = max(0.0, (q - (K - 2)) / c) if K > 2 and c > 0 else 0.0
        kept = tau2 / (tau2 + s[:, v] ** 2) if tau2 > 0 else np.zeros(K)
        line = X @ coef
        out[:, v] = line + kept * (y[:, v] - line)
        info["a"].append(float(coef[0]))
        info["b"].append(float(coef[1]))
        info["tau"].append(float(np.sqrt(tau2)))
        info["kept"].append(kept.tolist())
    return out, info
