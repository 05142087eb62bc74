"""TiKMiX-D exactly as the paper states it (operators/mixture/tikmix_paper.py): tasks × domains influence,
per-task max normalisation, α·std − β·ΣP̂ − γ·H(w), Pareto constraint against the prior, SLSQP from
uniform. influmix's box and reuse caps are applied as bounds (the paper has only w ≥ 0)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from operators.mixture.tikmix_paper import solve_tikmix_paper
from workflows.solvers.base import SOLVERS, MixtureProblem, SolveContext, Solver, SolverResult


@SOLVERS.register
class TikmixDPaper(Solver):
    name = "tikmix_d_paper"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        alpha: float = Field(default=1.0, ge=0, description="weight of std(P̂) (balance across tasks)")
        beta: float = Field(default=1.0, ge=0, description="weight of ΣP̂ (total influence gain)")
        gamma: float = Field(default=1.0, ge=0, description="weight of the entropy H(w) (diversity)")
        pareto: bool = Field(default=True, description="S·w ≥ S·w_prior (dropped, and reported, if infeasible)")
        use_bounds: bool = Field(default=True, description="apply influmix box and reuse caps")

    def stronger_prior(self, problem: MixtureProblem, factor: float) -> tuple[str, Solver]:
        """The entropy term γ·H(w) is this solver's pull (toward uniform)."""
        gamma = self.options.gamma * factor
        return f"gamma={gamma:g}", TikmixDPaper(self.options.model_copy(update={"gamma": gamma}))

    def solve(self, problem: MixtureProblem, ctx: SolveContext | None = None) -> SolverResult:
        o = self.options
        lower, upper = (problem.lower, problem.upper) if o.use_bounds else (None, None)
        w, info = solve_tikmix_paper(problem.gi.T, problem.prior, lower, upper, o.alpha, o.beta, o.gamma,
                                     o.pareto)
        return SolverResult(w, info)
