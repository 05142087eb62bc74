"""TiKMiX-D as influmix runs it: maximise budgeted influence gain with a KL pull toward a fixed anchor.

    maximize_w  Σ_k gain_k(w_k) − β·KL(w ‖ anchor)   on the bounded simplex (box and reuse caps),

gain_k = s_k·value_k(w_k): the domain score times the unique-equivalent share of the next stage that
weight w_k buys (operators/mixture/budget.py; diminishing returns of repeated tokens). With the default anchor
(the fixed prior: uniform or token-proportional) the answer depends only on this refresh's scores, so
chained refreshes with stable scores give the same mixture instead of compounding toward the caps. The
``previous`` anchor is damped: anchor = (1 − damping)·previous + damping·prior.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from operators.mixture.budget import budgeted_gain, solve_budgeted
from operators.mixture.simplex import solve_tikmix_d
from workflows.solvers.base import SOLVERS, MixtureProblem, SolveContext, Solver, SolverResult


def _kl(w: np.ndarray, ref: np.ndarray) -> float:
    pos = w > 0
    return float(np.sum(w[pos] * (np.log(w[pos]) - np.log(np.maximum(ref[pos], 1e-300)))))


@SOLVERS.register
class TikmixD(Solver):
    name = "tikmix_d"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        beta: float | None = Field(default=None, gt=0, description="KL strength; default mixture.beta")
        anchor: Literal["prior", "previous"] = Field(
            default="prior", description="prior: fixed (no compounding); previous: damped trust region")
        damping: float = Field(default=0.5, ge=0, le=1, description="prior share of a `previous` anchor")
        diminishing_returns: bool = Field(default=True, description="value repeated tokens less (Muennighoff)")

    def anchor(self, problem: MixtureProblem) -> np.ndarray:
        if self.options.anchor == "prior" or problem.previous_weights is None:
            return problem.prior
        prev = np.array([problem.previous_weights.get(d, 0.0) for d in problem.domains], dtype=np.float64)
        if prev.sum() <= 0:
            return problem.prior
        mixed = (1.0 - self.options.damping) * prev / prev.sum() + self.options.damping * problem.prior
        return mixed / mixed.sum()

    def beta(self, problem: MixtureProblem) -> float:
        return self.options.beta or float(problem.info.get("beta", 1.0))

    def stronger_prior(self, problem: MixtureProblem, factor: float) -> tuple[str, Solver]:
        beta = self.beta(problem) * factor
        return f"beta={beta:g}", TikmixD(self.options.model_copy(update={"beta": beta}))

    def solve(self, problem: MixtureProblem, ctx: SolveContext | None = None) -> SolverResult:
        beta = self.beta(problem)
        anchor = self.anchor(problem)
        s = problem.scores
        if self.options.diminishing_returns:
            w = solve_budgeted(s, anchor, beta, problem.lower, problem.upper, problem.budget)
            gain = budgeted_gain(w, s, problem.budget)
        else:
            w = solve_tikmix_d(s, anchor, beta, problem.lower, problem.upper)
            gain = float(w @ s)
        return SolverResult(w, {
            "beta": beta, "anchor": self.options.anchor,
            "anchor_weights": dict(zip(problem.domains, anchor.round(6).tolist())),
            "diminishing_returns": self.options.diminishing_returns,
            "objective": gain - beta * _kl(w, anchor), "gain": gain,
        })
