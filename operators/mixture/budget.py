"""The next stage's token budget: planned epochs per domain and the diminishing value of repeats.

A domain with ``U`` unique tokens that receives weight ``w`` of a ``B``-token stage is read
``w·B/U`` times. Muennighoff et al. (2023, "Scaling Data-Constrained Language Models") fit the value
of repeated tokens as an exponential decay: ``D`` tokens drawn from ``U`` unique ones are worth

    D' = U + U·R*·(1 − exp(−R/R*)),   R = D/U − 1 repetitions beyond the first pass (R ≥ 0),

unique-equivalent tokens, with ``R* ≈ 15.4``. :func:`solve_budgeted` maximises the TiKMiX-D objective
with each domain's linear gain replaced by this value curve (for domains that help; a harmful domain
stays linear, repeating it is no less harmful), under the hard reuse cap ``w ≤ max_epochs·U/B``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

from operators.errors import ConfigError
from operators.mixture.simplex import _fix_sum, check_feasible

REPETITION_SCALE = 15.4  # R*_D of Muennighoff et al. 2023 (data repetition half-life scale)


def unique_equivalent(drawn: np.ndarray, unique: np.ndarray, scale: float) -> np.ndarray:
    """D' of ``drawn`` tokens read from ``unique`` ones: all of them in the first pass, then decaying."""
    drawn = np.asarray(drawn, dtype=np.float64)
    u = np.maximum(np.asarray(unique, dtype=np.float64), 1e-300)
    reps = np.maximum(drawn / u - 1.0, 0.0)
    return np.where(drawn <= u, drawn, u + u * scale * -np.expm1(-reps / scale))


@dataclass(frozen=True)
class Budget:
    """Tokens of the next stage and unique tokens available per domain (same domain order).

    ``tokens_consumed`` (K,): tokens earlier stages already drew from each domain (from the chain of
    previous manifests); they count toward planned epochs, the reuse cap and the value of repeats.
    """

    tokens_next_stage: float
    tokens_available: np.ndarray  # (K,) unique tokens per domain over the whole corpus
    max_epochs: float | None = 4.0
    repetition_scale: float = REPETITION_SCALE
    source: str = "config"  # where tokens_next_stage came from (config, checkpoint, default)
    tokens_consumed: np.ndarray | None = None

    def __post_init__(self) -> None:
        u = np.asarray(self.tokens_available, dtype=np.float64)
        if not np.isfinite(self.tokens_next_stage) or self.tokens_next_stage <= 0:
            raise ConfigError(f"token budget of the next stage must be > 0, got {self.tokens_next_stage}")
        if u.ndim != 1 or not np.all(np.isfinite(u)) or np.any(u < 0):
            raise ConfigError(f"tokens_available must be finite and >= 0 per domain, got {u.tolist()}")
        if self.repetition_scale <= 0:
            raise ConfigError(f"repetition_scale must be > 0, got {self.repetition_scale}")
        c = np.zeros_like(u) if self.tokens_consumed is None else np.asarray(self.tokens_consumed, dtype=np.float64)
        if c.shape != u.shape or not np.all(np.isfinite(c)) or np.any(c < 0):
            raise ConfigError(f"tokens_consumed must be finite and >= 0 per domain, got {c.tolist()}")
        object.__setattr__(self, "tokens_available", u)
        object.__setattr__(self, "tokens_consumed", c)

    def epochs(self, w: np.ndarray) -> np.ndarray:
        """Planned passes over each domain's unique tokens by the end of the next stage, earlier stages
        included (inf where a domain has no tokens)."""
        drawn = self.tokens_consumed + np.asarray(w, dtype=np.float64) * self.tokens_next_stage
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.tokens_available > 0, drawn / np.maximum(self.tokens_available, 1e-300),
                            np.where(drawn > 0, np.inf, 0.0))

    def reuse_upper(self) -> np.ndarray:
        """Weight cap per domain from max_epochs, after what earlier stages drew (1 where there is no cap)."""
        if self.max_epochs is None:
            return np.ones_like(self.tokens_available)
        room = self.max_epochs * self.tokens_available - self.tokens_consumed
        return np.clip(room / self.tokens_next_stage, 0.0, 1.0)

    def value(self, w: np.ndarray) -> np.ndarray:
        """Unique-equivalent share of the stage each weight buys: ΔD'/B per domain."""
        w = np.asarray(w, dtype=np.float64)
        c, u, r = self.tokens_consumed, self.tokens_available, self.repetition_scale
        return (unique_equivalent(c + w * self.tokens_next_stage, u, r) - unique_equivalent(c, u, r)) \
            / self.tokens_next_stage

    def slope(self, w: np.ndarray) -> np.ndarray:
        """d value / d w: 1 during the first pass, then exp(−R/R*)."""
        drawn = self.tokens_consumed + np.asarray(w, dtype=np.float64) * self.tokens_next_stage
        u = np.maximum(self.tokens_available, 1e-300)
        reps = np.maximum(drawn / u - 1.0, 0.0)
        return np.where(drawn <= u, 1.0, np.exp(-reps / self.repetition_scale))


def relax_reuse_caps(budget: Budget, box_upper: np.ndarray) -> tuple[Budget, dict | None]:
    """When the box and the reuse caps cannot sum to 1 (the stage needs more tokens than max_epochs ×
    the data), raise max_epochs just enough that they do: every cap grows by the same factor, so the
    domains keep their relative room. Returns the budget to use and what was relaxed (None if nothing)."""
    box = np.asarray(box_upper, dtype=np.float64)
    if budget.max_epochs is None or np.minimum(box, budget.reuse_upper()).sum() >= 1.0 - 1e-12:
        return budget, None
    if box.sum() < 1.0 - 1e-12 or budget.tokens_available.sum() <= 0:
        return budget, None  # infeasible without the reuse cap: the box check reports it

    def total(epochs: float) -> float:
        room = epochs * budget.tokens_available - budget.tokens_consumed
        return float(np.minimum(box, np.clip(room / budget.tokens_next_stage, 0.0, 1.0)).sum())

    lo, hi = float(budget.max_epochs), float(budget.max_epochs)
    while total(hi) < 1.0:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if total(mid) < 1.0 else (lo, mid)
    relaxed = Budget(budget.tokens_next_stage, budget.tokens_available, hi, budget.repetition_scale,
                     budget.source, budget.tokens_consumed)
    info = {"reason": (f"the next stage's {budget.tokens_next_stage:.4g} tokens need more than max_epochs="
                       f"{budget.max_epochs:g} passes over the data the caps allow "
                       f"({np.minimum(box, budget.reuse_upper()).sum():.3f} of the stage)"),
            "max_epochs_configured": float(budget.max_epochs), "max_epochs_used": hi,
            "caps_configured": np.minimum(box, budget.reuse_upper()).tolist(),
            "caps_used": np.minimum(box, relaxed.reuse_upper()).tolist()}
    return relaxed, info


def budgeted_gain(w: np.ndarray, scores: np.ndarray, budget: Budget) -> float:
    """Σ_k s_k·value_k(w_k) for helpful domains (s_k > 0), s_k·w_k for the others."""
    s = np.asarray(scores, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    return float(np.sum(np.where(s > 0, s * budget.value(w), s * w)))


def _coordinates(s: np.ndarray, r: np.ndarray, beta: float, lo: np.ndarray, hi: np.ndarray, t: float,
                 budget: Budget) -> np.ndarray:
    """Per domain, argmax over [lo, hi] of s·v(w) − β·w·log(w/r) − β·t·w: its derivative
    g(w) = s·v'(w) − β(log(w/r) + 1 + t) is strictly decreasing, so a vectorised bisection in log w
    finds the root (or the bound where g keeps one sign)."""
    pos = s > 0

    def grad(w: np.ndarray) -> np.ndarray:
        slope = np.where(pos, budget.slope(w), 1.0)
        return s * slope - beta * (np.log(w / r) + 1.0 + t)

    a = np.log(np.maximum(lo, 1e-300))
    b = np.log(np.maximum(hi, 1e-300))
    at_lo = grad(np.exp(a)) <= 0
    at_hi = grad(np.exp(b)) >= 0
    for _ in range(80):  # 80 halvings of a <= 690-wide log interval: below 1e-21 relative
        mid = 0.5 * (a + b)
        up = grad(np.exp(mid)) > 0
        a = np.where(up, mid, a)
        b = np.where(up, b, mid)
    w = np.exp(0.5 * (a + b))
    return np.where(at_lo, lo, np.where(at_hi, hi, w))


def solve_budgeted(scores: np.ndarray, w_ref: np.ndarray, beta: float, lower: np.ndarray,
                   upper: np.ndarray, budget: Budget) -> np.ndarray:
    """maximize Σ gain_k(w_k) − β KL(w‖w_ref) on {Σw = 1, lower ≤ w ≤ upper}, gains as in budgeted_gain.

    Separable and strictly concave: each coordinate solves a monotone 1-D condition for a given
    multiplier t, and t is found by bisection on Σ w(t) = 1.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    r = np.asarray(w_ref, dtype=np.float64).reshape(-1)
    lo = np.asarray(lower, dtype=np.float64).reshape(-1)
    hi = np.asarray(upper, dtype=np.float64).reshape(-1)
    if not (s.shape == r.shape == lo.shape == hi.shape == budget.tokens_available.shape):
        raise ConfigError("solve_budgeted: scores, w_ref, bounds and tokens_available need one length")
    if not np.all(np.isfinite(s)) or beta <= 0 or np.any(r < 0) or r.sum() <= 0:
        raise ConfigError(f"solve_budgeted: need finite scores, beta > 0, a valid w_ref; got {s}, {beta}")
    check_feasible([str(i) for i in range(s.size)], lo, hi)
    live = r > 0
    r_safe = np.where(live, r, 1.0)

    def weights(t: float) -> np.ndarray:
        return np.where(live, _coordinates(s, r_safe, beta, lo, hi, t, budget), lo)

    t_lo, t_hi = -1.0, 1.0
    while weights(t_lo).sum() < 1.0 and t_lo > -1e6:
        t_lo *= 2.0
    while weights(t_hi).sum() > 1.0 and t_hi < 1e6:
        t_hi *= 2.0
    f_lo, f_hi = weights(t_lo).sum() - 1.0, weights(t_hi).sum() - 1.0
    if f_lo < -1e-9:
        raise ConfigError("mixture infeasible: domains with a positive reference weight cannot reach sum 1")
    if abs(f_lo) <= 1e-12:
        return weights(t_lo)
    if abs(f_hi) <= 1e-12:
        return weights(t_hi)
    t = brentq(lambda x: weights(x).sum() - 1.0, t_lo, t_hi, xtol=1e-13, rtol=1e-13, maxiter=200)
    return _fix_sum(weights(t), lo, hi)
