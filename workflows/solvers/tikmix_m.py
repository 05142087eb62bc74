"""TiKMiX-M: regression over probe-labelled candidate mixtures (workflows/tikmix_m_stage.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from workflows.solvers import SOLVERS
from workflows.solvers.base import MixtureProblem, SolveContext, Solver, SolverResult


@SOLVERS.register
class TikmixM(Solver):
    name = "tikmix_m"
    measures = True

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

    def solve(self, problem: MixtureProblem, ctx: SolveContext | None = None) -> SolverResult:
        if ctx is None:
            raise ValueError("tikmix_m trains probes: it needs a SolveContext")
        from workflows.tikmix_m_stage import run_tikmix_m

        weights, report = run_tikmix_m(ctx.cfg, ctx.plan, ctx.model_uri, problem, ctx.layout)
        return SolverResult(weights, report)
