"""TiKMiX-M surrogate: ridge regression from candidate mixtures to a measured quality label.

:class:`MixtureRegressor` fits labels measured by the caller (short training probes) on a full-rank
quadratic mixture design with the influence direction w·s as one feature; see docs/ALGORITHMS.md §7.
:func:`sample_dirichlet_mixtures` draws RegMix-style Dirichlet candidates within bounds (the testbed's
candidate grid).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from operators.errors import ConfigError
from operators.influence.group import spearman

DEFAULT_STRENGTHS = np.geomspace(0.1, 5.0, 15)
DEFAULT_ALPHAS = np.logspace(-6, 3, 28)
_PREDICT_BLOCK = 16_384


def _bounds(k: int, lower: np.ndarray | None, upper: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    lo = np.zeros(k) if lower is None else np.asarray(lower, dtype=np.float64).reshape(-1)
    hi = np.ones(k) if upper is None else np.asarray(upper, dtype=np.float64).reshape(-1)
    if lo.size != k or hi.size != k:
        raise ConfigError(f"mixture bounds must have {k} entries, got {lo.size} and {hi.size}")
    return lo, hi


def sample_dirichlet_mixtures(
    prior: np.ndarray,
    n: int,
    seed: int,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
    strengths: np.ndarray | Sequence[float] | None = None,
    max_rounds: int = 50,
) -> np.ndarray:
    """n mixtures w ~ Dirichlet(prior · s), s drawn per sample from `strengths` (default 15 log-spaced in
    [0.1, 5], as RegMix); samples outside [lower, upper] are rejected. ConfigError if bounds are too tight.

    Domains pinned by lower == upper keep that weight; the others share the rest as a scaled Dirichlet.
    """
    p = np.asarray(prior, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ConfigError(f"Dirichlet prior must be finite, non-negative and not all zero, got {p.tolist()}")
    if n < 1:
        raise ConfigError(f"number of candidate mixtures must be >= 1, got {n}")
    p = p / p.sum()
    lo, hi = _bounds(p.size, lower, upper)
    s = DEFAULT_STRENGTHS if strengths is None else np.asarray(strengths, dtype=np.float64).reshape(-1)
    if s.size == 0 or np.any(s <= 0):
        raise ConfigError(f"Dirichlet strengths must be positive, got {s.tolist()}")
    pinned = hi - lo <= 1e-12
    free_mass = 1.0 - lo[pinned].sum()
    if pinned.all() or p[~pinned].sum() <= 0:
        raise ConfigError(f"no free mixture weight to sample: lower={lo.tolist()}, upper={hi.tolist()}")
    rng = np.random.default_rng(seed)
    batch = max(256, 2 * n)
    kept: list[np.ndarray] = []
    n_kept = drawn = 0
    for _ in range(max_rounds):
        alpha = p[None, :] * rng.choice(s, size=batch)[:, None] / p[~pinned].sum()
        g = np.where(pinned, 0.0, rng.standard_gamma(alpha))  # alpha = 0 gives 0: zero-prior domains stay 0
        tot = g.sum(axis=1, keepdims=True)
        ok = tot[:, 0] > 0  # tiny concentrations can underflow every coordinate
        w = np.where(pinned, lo, g[ok] / tot[ok] * free_mass)
        w = w[np.all((w >= lo - 1e-12) & (w <= hi + 1e-12), axis=1)]
        drawn += batch
        kept.append(w)
        n_kept += w.shape[0]
        if n_kept >= n:
            return np.concatenate(kept)[:n]
    raise ConfigError(
        f"mixture bounds too tight to sample: {n_kept} of {drawn} Dirichlet draws fell inside the bounds, "
        f"needed {n} (lower={lo.tolist()}, upper={hi.tolist()})"
    )


def _linear_basis(k: int, s: np.ndarray | None) -> np.ndarray:
    """(k, m) orthonormal directions orthogonal to the all-ones vector and, when given and not constant,
    to the scores s: the linear effects on the simplex that ``w·s`` and the intercept do not carry."""
    fixed = [np.ones(k)]
    if s is not None:
        centred = s - s.mean()
        if np.linalg.norm(centred) > 1e-12 * max(float(np.abs(s).max()), 1e-300):
            fixed.append(centred)
    q, _ = np.linalg.qr(np.column_stack([*fixed, np.eye(k)]))
    return q[:, len(fixed):k]


def mixture_design(
    W: np.ndarray, influence: np.ndarray | None = None, domain_names: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Full-rank quadratic mixture features (with an intercept) → ((n, p) array, p names).

    On the simplex Σw = 1, so the w columns sum to the intercept, any w·s is a combination of them, and
    w_k² = w_k − Σ_{j≠k} w_k·w_j. The design keeps one column per direction: ``w.s`` (when influence
    scores s are given), the coordinates of w along the remaining linear directions (``lin<i>``,
    orthogonal to 1 and s) and the Scheffé cross terms w_i·w_j (i < j).
    """
    W = np.atleast_2d(np.asarray(W, dtype=np.float64))
    k = W.shape[1]
    names = [str(d) for d in domain_names] if domain_names is not None else [f"w{i}" for i in range(k)]
    if len(names) != k:
        raise ConfigError(f"domain_names has {len(names)} entries for {k} mixture columns")
    cols: list[np.ndarray] = []
    feat_names: list[str] = []
    s = None
    if influence is not None:
        s = np.asarray(influence, dtype=np.float64).reshape(-1)
        if s.size != k:
            raise ConfigError(f"influence scores have {s.size} entries for {k} mixture columns")
        cols.append((W @ s)[:, None])
        feat_names.append("w.s")
    basis = _linear_basis(k, s)
    iu, ju = np.triu_indices(k, 1)
    cols += [W @ basis, W[:, iu] * W[:, ju]]
    feat_names += [f"lin{i}" for i in range(basis.shape[1])]
    feat_names += [f"{names[i]}*{names[j]}" for i, j in zip(iu, ju)]
    return np.concatenate(cols, axis=1), feat_names


class MixtureRegressor:
    """Ridge regression on standardised quadratic mixture features (:func:`mixture_design`); alpha by CV.

    cv="loo" uses the closed-form leave-one-out residuals e_i / (1 − h_ii) from one SVD; an int uses k-fold.
    After fit: `alpha`, `cv_spearman` (Spearman of out-of-fold predictions vs labels), `cv_rmse` (compare
    with `label_std`: no skill when it is not smaller). After `bootstrap`, `predict_std` gives a
    prediction uncertainty from ridge refits on resampled labels.
    """

    def __init__(
        self,
        influence: np.ndarray | None = None,
        domain_names: Sequence[str] | None = None,
        alphas: np.ndarray | Sequence[float] | None = None,
        cv: Literal["loo"] | int = "loo",
        seed: int = 0,
    ) -> None:
        self.influence = None if influence is None else np.asarray(influence, dtype=np.float64)
        self.domain_names = None if domain_names is None else list(domain_names)
        self.alphas = DEFAULT_ALPHAS if alphas is None else np.asarray(alphas, dtype=np.float64)
        if cv != "loo" and (not isinstance(cv, int) or cv < 2):
            raise ConfigError(f"regression cv must be 'loo' or an int >= 2, got {cv!r}")
        self.cv = cv
        self.seed = seed
        self.alpha: float | None = None
        self.cv_spearman: float = float("nan")
        self.cv_rmse: float = float("nan")
        self.n_train = 0
        self.label_std = float("nan")

    def _design(self, W: np.ndarray) -> tuple[np.ndarray, list[str]]:
        return mixture_design(W, self.influence, self.domain_names)

    @staticmethod
    def _standardize(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mu, sd = X.mean(axis=0), X.std(axis=0)
        sd = np.where(sd > 1e-12, sd, 1.0)  # constant columns (e.g. w.s with equal scores) stay 0
        return (X - mu) / sd, mu, sd

    @classmethod
    def _ridge(
        cls, X: np.ndarray, y: np.ndarray, alpha: float
    ) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
        """Ridge on standardised features with an unpenalised intercept (SVD form, stable for p > n)."""
        Z, mu, sd = cls._standardize(X)
        U, S, Vt = np.linalg.svd(Z, full_matrices=False)
        coef = Vt.T @ (S / (S**2 + alpha) * (U.T @ (y - y.mean())))
        return coef, float(y.mean()), mu, sd

    def _loo(self, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Alpha with the smallest closed-form leave-one-out error, and its out-of-fold predictions."""
        U, S, _ = np.linalg.svd(self._standardize(X)[0], full_matrices=False)
        Uy = U.T @ (y - y.mean())
        best = (np.inf, 0.0, y)
        for alpha in self.alphas:
            shrink = S**2 / (S**2 + alpha)
            fitted = U @ (shrink * Uy) + y.mean()
            h = (U**2) @ shrink + 1.0 / y.size  # + 1/n for the intercept
            resid = (y - fitted) / np.maximum(1.0 - h, 1e-12)
            mse = float(np.mean(resid**2))
            if mse < best[0]:
                best = (mse, float(alpha), y - resid)
        return best[1], best[2]

    def _kfold(self, X: np.ndarray, y: np.ndarray, folds: int) -> tuple[float, np.ndarray]:
        fold = np.random.default_rng(self.seed).permutation(y.size) % folds
        best = (np.inf, 0.0, y)
        for alpha in self.alphas:
            pred = np.empty_like(y)
            for f in range(folds):
                tr = fold != f
                coef, b, mu, sd = self._ridge(X[tr], y[tr], float(alpha))
                pred[~tr] = ((X[~tr] - mu) / sd) @ coef + b
            mse = float(np.mean((pred - y) ** 2))
            if mse < best[0]:
                best = (mse, float(alpha), pred)
        return best[1], best[2]

    def fit(self, W: np.ndarray, y: np.ndarray, alpha: float | None = None) -> MixtureRegressor:
        X, self.feature_names = self._design(W)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if y.size != X.shape[0] or y.size < 3 or not np.all(np.isfinite(y)):
            raise ConfigError(
                f"regression needs >= 3 finite labels, one per mixture; got {y.size} for {X.shape[0]}"
            )
        if alpha is None:
            if self.cv == "loo":
                self.alpha, oof = self._loo(X, y)
            else:
                self.alpha, oof = self._kfold(X, y, min(int(self.cv), y.size))
            self.cv_rmse = float(np.sqrt(np.mean((oof - y) ** 2)))
            self.cv_spearman = spearman(oof, y)
        else:
            self.alpha = float(alpha)
        self.coef_, self.intercept_, self._mu, self._sd = self._ridge(X, y, self.alpha)
        self.n_train = y.size
        self.label_std = float(y.std())
        self._X, self._y, self._boot = X, y, []
        return self

    def predict(self, W: np.ndarray) -> np.ndarray:
        if self.alpha is None:
            raise ConfigError("MixtureRegressor.predict called before fit")
        W = np.atleast_2d(np.asarray(W, dtype=np.float64))
        out = np.empty(W.shape[0])
        for start in range(0, W.shape[0], _PREDICT_BLOCK):
            X, _ = self._design(W[start : start + _PREDICT_BLOCK])
            out[start : start + X.shape[0]] = ((X - self._mu) / self._sd) @ self.coef_ + self.intercept_
        return out

    def bootstrap(self, n_boot: int = 64, seed: int = 0) -> MixtureRegressor:
        """Refit at the chosen alpha on ``n_boot`` resamples of the labelled mixtures (for `predict_std`)."""
        if self.alpha is None:
            raise ConfigError("MixtureRegressor.bootstrap called before fit")
        X, y = self._X, self._y
        rng = np.random.default_rng(seed)
        self._boot = []
        for _ in range(n_boot):
            idx = rng.integers(0, y.size, y.size)
            if np.unique(idx).size >= 3:
                self._boot.append(self._ridge(X[idx], y[idx], self.alpha))
        return self

    def predict_std(self, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std): the full fit's prediction and the std over bootstrap refits (0 without them)."""
        mean = self.predict(W)
        if not getattr(self, "_boot", None):
            return mean, np.zeros_like(mean)
        X, _ = self._design(np.atleast_2d(np.asarray(W, dtype=np.float64)))
        preds = np.stack([((X - mu) / sd) @ coef + b for coef, b, mu, sd in self._boot])
        return mean, preds.std(axis=0)

    def lower_bound(self, W: np.ndarray, kappa: float) -> np.ndarray:
        """mean − κ·std: what a cautious choice maximises."""
        mean, std = self.predict_std(W)
        return mean - kappa * std

    def describe(self, top: int = 10) -> dict[str, Any]:
        """JSON-able summary: alpha, CV quality, and the largest standardised coefficients."""
        if self.alpha is None:
            return {"fitted": False}
        order = np.argsort(-np.abs(self.coef_))[:top]
        return {
            "fitted": True,
            "model": "ridge",
            "alpha": self.alpha,
            "cv": self.cv,
            "cv_spearman": self.cv_spearman,
            "cv_rmse": self.cv_rmse,
            "label_std": self.label_std,
            "cv_r2": 1.0 - self.cv_rmse**2 / self.label_std**2 if self.label_std > 0 else float("nan"),
            "n_bootstrap": len(getattr(self, "_boot", [])),
            "n_train": self.n_train,
            "n_features": int(self.coef_.size),
            "top_coefficients": {self.feature_names[i]: float(self.coef_[i]) for i in order},
        }
