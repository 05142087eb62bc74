"""KL-regularised influence maximisation over the bounded simplex: the kernel of the ``tikmix_d``
solver (workflows/solvers/tikmix_d.py), plus bounds, reference mixtures and simplex projection.

    maximize_w  Σ_k w_k s_k − β KL(w ‖ w_ref)   s.t.  Σ_k w_k = 1,  lower_k ≤ w_k ≤ upper_k

The objective is separable and strictly concave, so the KKT point is
w_k(ν) = clip(w_ref_k · exp((s_k − ν)/β), lower_k, upper_k) with ν the unique root of Σ_k w_k(ν) = 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.optimize import brentq
from scipy.special import logsumexp

from operators.errors import ConfigError

_SUM_TOL = 1e-9
_RTOL = 4 * np.finfo(np.float64).eps


class MixtureConstraints(BaseModel):
    """Box constraints on mixture weights (the reuse cap lives in ``mixture.budget``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_weight: float = Field(default=0.0, ge=0.0, le=1.0)
    max_weight: float = Field(default=1.0, ge=0.0, le=1.0)
    domain_min: dict[str, float] = {}
    domain_max: dict[str, float] = {}

    @model_validator(mode="after")
    def _check_ranges(self) -> MixtureConstraints:
        if self.min_weight > self.max_weight:
            raise ValueError(f"min_weight ({self.min_weight}) exceeds max_weight ({self.max_weight})")
        for field in ("domain_min", "domain_max"):
            bad = {d: v for d, v in getattr(self, field).items() if not 0.0 <= v <= 1.0}
            if bad:
                raise ValueError(f"{field} values must lie in [0, 1], got {bad}")
        crossed = {
            d: (lo, self.domain_max[d])
            for d, lo in self.domain_min.items()
            if d in self.domain_max and lo > self.domain_max[d]
        }
        if crossed:
            raise ValueError(f"domain_min exceeds domain_max for {crossed}")
        return self


def bounds_for(
    domains: list[str], constraints: MixtureConstraints, cap: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-domain (lower, upper) bounds; ConfigError when they admit no mixture.

    upper_k = min(max_weight, domain_max_k, cap_k), where ``cap`` is an optional hard cap per domain (e.g.
    the budget's reuse cap, operators/mixture/budget.py). lower_k = domain_min_k if given, else
    min(min_weight, upper_k): the global floor yields to a hard cap, an explicit per-domain floor above its
    cap is an error.
    """
    known = set(domains)
    for field in ("domain_min", "domain_max"):
        unknown = sorted(set(getattr(constraints, field)) - known)
        if unknown:
            raise ConfigError(
                f"mixture.constraints.{field} names unknown domains {unknown}; domains are {domains}"
            )
    upper = np.array([min(constraints.max_weight, constraints.domain_max.get(d, 1.0)) for d in domains])
    if cap is not None:
        upper = np.minimum(upper, np.asarray(cap, dtype=np.float64))
    lower = np.array([constraints.domain_min.get(d, constraints.min_weight) for d in domains])
    implicit = np.array([d not in constraints.domain_min for d in domains])
    lower = np.where(implicit, np.minimum(lower, upper), lower)
    crossed = [f"{d}: min {lo:.4g} > max {hi:.4g}" for d, lo, hi in zip(domains, lower, upper) if lo > hi]
    if crossed:
        raise ConfigError(f"mixture.constraints.domain_min exceeds the domain's upper bound: {crossed}")
    check_feasible(domains, lower, upper)
    return lower, upper


def check_feasible(domains: Sequence[str], lower: np.ndarray, upper: np.ndarray) -> None:
    """ConfigError (listing the bounds) unless Σ lower ≤ 1 ≤ Σ upper."""
    detail = ", ".join(f"{d}=[{lo:.4g}, {hi:.4g}]" for d, lo, hi in zip(domains, lower, upper))
    if lower.sum() > 1 + _SUM_TOL:
        raise ConfigError(
            f"mixture lower bounds sum to {lower.sum():.6g} > 1 (min_weight/domain_min too large): {detail}"
        )
    if upper.sum() < 1 - _SUM_TOL:
        raise ConfigError(
            f"mixture upper bounds sum to {upper.sum():.6g} < 1 (max_weight/domain_max, or the reuse cap "
            f"max_epochs for tokens_next_stage, too tight): {detail}"
        )


def _as_problem(
    w_ref: np.ndarray, lower: np.ndarray, upper: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r = np.asarray(w_ref, dtype=np.float64).reshape(-1)
    lo = np.asarray(lower, dtype=np.float64).reshape(-1)
    hi = np.asarray(upper, dtype=np.float64).reshape(-1)
    if not (r.shape == lo.shape == hi.shape):
        raise ConfigError(f"w_ref, lower and upper must have one length, got {r.size}, {lo.size}, {hi.size}")
    if not np.all(np.isfinite(r)) or np.any(r < 0) or r.sum() <= 0:
        raise ConfigError(f"reference mixture must be finite, non-negative, not all zero; got {r.tolist()}")
    if np.any(lo > hi):
        raise ConfigError(f"mixture lower bounds exceed upper bounds at {np.flatnonzero(lo > hi).tolist()}")
    check_feasible([str(i) for i in range(r.size)], lo, hi)
    return r, lo, hi


def solve_tikmix_d(
    scores: np.ndarray, w_ref: np.ndarray, beta: float, lower: np.ndarray, upper: np.ndarray
) -> np.ndarray:
    """Exact maximiser of Σ w s − β KL(w‖w_ref) over {Σw=1, lower ≤ w ≤ upper}.

    Works in log space (a_k = log w_ref_k + s_k/β), so large s/β cannot overflow. Domains with w_ref_k = 0
    stay at lower_k. ConfigError when the domains with w_ref_k > 0 cannot reach Σw = 1 within their upper
    bounds.
    """
    if not np.isfinite(beta) or beta <= 0:
        raise ConfigError(f"mixture beta must be finite and > 0, got {beta}")
    r, lo, hi = _as_problem(w_ref, lower, upper)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.shape != r.shape or not np.all(np.isfinite(s)):
        raise ConfigError(f"domain scores must be {r.size} finite values, got {s.tolist()}")
    live = (r > 0) & (hi > lo)
    with np.errstate(divide="ignore"):
        # reference-zero domains get a = -inf, i.e. w_k = clip(0) = lower_k
        a = np.where(r > 0, np.log(np.where(r > 0, r, 1.0)) + s / beta, -np.inf)

    def weights(t: float) -> np.ndarray:
        return np.clip(np.exp(np.minimum(a - t, 700.0)), lo, hi)

    if not live.any():
        if abs(lo.sum() - 1.0) > _SUM_TOL:
            raise ConfigError("mixture infeasible: no domain with a positive reference weight can move")
        return _fix_sum(lo.copy(), lo, hi)
    # Bracket t = ν/β: at t_lo every live domain sits at its upper bound, at t_hi at its lower bound.
    log_lo = np.where(lo > 0, np.log(np.where(lo > 0, lo, 1.0)), -745.0)  # lower 0: exp(a - t) underflows
    t_lo = float(np.min((a - np.log(np.where(live, hi, 1.0)))[live]))
    t_hi = float(np.max((a - log_lo)[live])) + 1.0
    if weights(t_lo).sum() < 1 - _SUM_TOL:
        raise ConfigError(
            "mixture infeasible: domains with a positive reference weight cannot reach sum 1 within their "
            "upper bounds"
        )
    for edge in (t_lo, t_hi):  # bounds that are tight within tolerance leave no sign change for brentq
        if abs(weights(edge).sum() - 1.0) <= _SUM_TOL:
            return _fix_sum(weights(edge), lo, hi)
    t = brentq(lambda x: weights(x).sum() - 1.0, t_lo, t_hi, xtol=1e-15, rtol=_RTOL, maxiter=500)
    # Polish: the free coordinates have a closed-form ν given the clamped ones.
    for _ in range(5):
        w = weights(t)
        free = live & (w > lo) & (w < hi)
        rest = 1.0 - w[~free].sum()
        if not free.any() or rest <= 0:
            break
        t_new = float(logsumexp(a[free]) - np.log(rest))
        if t_new == t:
            break
        t = t_new
    return _fix_sum(weights(t), lo, hi)


def _fix_sum(w: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Spread a rounding-size residual of Σw − 1 over coordinates with slack, staying in the box."""
    w = np.clip(w, lo, hi)
    for _ in range(3):
        resid = 1.0 - w.sum()
        if resid == 0:
            break
        slack = (hi - w) if resid > 0 else (w - lo)
        if slack.sum() <= 0:
            break
        w = np.clip(w + resid * slack / slack.sum(), lo, hi)
    return w


def objective(w: np.ndarray, scores: np.ndarray, w_ref: np.ndarray, beta: float) -> float:
    """Σ w s − β KL(w‖w_ref) (−inf when w puts mass where w_ref has none)."""
    w = np.asarray(w, dtype=np.float64)
    r = np.asarray(w_ref, dtype=np.float64)
    pos = w > 0
    if np.any(pos & (r <= 0)):
        return float("-inf")
    kl = float(np.sum(w[pos] * (np.log(w[pos]) - np.log(r[pos]))))
    return float(np.dot(w, np.asarray(scores, dtype=np.float64)) - beta * kl)


def project_bounded_simplex(v: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Euclidean projection of v onto {Σw = 1, lower ≤ w ≤ upper}: w = clip(v − τ, lower, upper)."""
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    _, lo, hi = _as_problem(np.ones_like(v), lower, upper)
    if not np.all(np.isfinite(v)):
        raise ConfigError(f"cannot project non-finite vector {v.tolist()}")
    total = lambda tau: np.clip(v - tau, lo, hi).sum() - 1.0  # noqa: E731
    tau_lo, tau_hi = float(np.min(v - hi)) - 1.0, float(np.max(v - lo)) + 1.0
    tau = brentq(total, tau_lo, tau_hi, xtol=1e-15, rtol=_RTOL, maxiter=500)
    return _fix_sum(np.clip(v - tau, lo, hi), lo, hi)


def resolve_reference(
    kind: Literal["previous", "uniform", "tokens"],
    domains: list[str],
    previous: dict[str, float] | None = None,
    tokens: dict[str, int] | None = None,
    *,
    new_domain_share: float = 0.1,
    smoothing: float = 1e-4,
) -> np.ndarray:
    """Reference mixture w_ref (K,) for the KL term.

    * uniform: 1/K.  * tokens: proportional to tokens[d] (natural distribution).
    * previous: the previous manifest's weights restricted to `domains` and renormalised; falls back to
      uniform when `previous` is None or puts no mass on `domains`. Each domain absent from `previous` gets
      new_domain_share/K (a tenth of a uniform share by default); the known domains are scaled to fill the
      rest. Finally w_ref = (1 − smoothing)·w_ref + smoothing/K (DoReMi-style), so a domain that reached
      weight 0 can still come back instead of being pinned at its lower bound forever.
    """
    k = len(domains)
    if k == 0 or len(set(domains)) != k:
        raise ConfigError(f"domains must be a non-empty list of unique names, got {domains}")
    uniform = np.full(k, 1.0 / k)
    if kind == "uniform":
        return uniform
    if kind == "tokens":
        if tokens is None or any(d not in tokens for d in domains):
            missing = domains if tokens is None else [d for d in domains if d not in tokens]
            raise ConfigError(f"mixture.reference=tokens needs token counts for domains {missing}")
        t = np.array([tokens[d] for d in domains], dtype=np.float64)
        if np.any(t < 0) or t.sum() <= 0:
            counts = dict(zip(domains, t.tolist()))
            raise ConfigError(f"token counts must be non-negative and not all zero, got {counts}")
        return t / t.sum()
    if kind != "previous":
        raise ConfigError(f"mixture.reference must be previous|uniform|tokens, got {kind!r}")
    if not 0 <= new_domain_share <= 1 or not 0 <= smoothing <= 1:
        raise ConfigError(f"new_domain_share, smoothing must be in [0, 1]: {new_domain_share}, {smoothing}")
    if previous is None:
        return uniform
    bad = {d: v for d, v in previous.items() if not (np.isfinite(v) and v >= 0)}
    if bad:
        raise ConfigError(f"previous manifest weights must be finite and non-negative, got {bad}")
    known = np.array([d in previous for d in domains])
    base = np.array([previous.get(d, 0.0) for d in domains], dtype=np.float64)
    if base.sum() <= 0:
        return uniform
    n_new = int((~known).sum())
    share = new_domain_share / k
    ref = np.where(known, base / base.sum() * (1.0 - n_new * share), share)
    ref = (1.0 - smoothing) * ref + smoothing / k
    return ref / ref.sum()
