"""The two mixtures every team already has: uniform over domains, and the natural distribution
(proportional to each domain's unique tokens over the whole corpus)."""

from __future__ import annotations

import numpy as np

from operators.mixture.simplex import project_bounded_simplex
from workflows.baselines.base import BASELINES
from workflows.solvers.base import MixtureProblem, SolveContext, Solver, SolverResult


@BASELINES.register
class Uniform(Solver):
    name = "uniform"

    def solve(self, problem: MixtureProblem, ctx: SolveContext | None = None) -> SolverResult:
        k = len(problem.domains)
        return SolverResult(project_bounded_simplex(np.full(k, 1.0 / k), problem.lower, problem.upper))


@BASELINES.register
class Tokens(Solver):
    name = "tokens"

    def solve(self, problem: MixtureProblem, ctx: SolveContext | None = None) -> SolverResult:
        u = problem.budget.tokens_available
        w = u / u.sum() if u.sum() > 0 else np.full(u.size, 1.0 / u.size)
        return SolverResult(project_bounded_simplex(w, problem.lower, problem.upper),
                            {"tokens_available": dict(zip(problem.domains, u.tolist()))})
