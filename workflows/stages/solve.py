"""Solve stage: the primary solver, the solvers it is compared with, the primary's stronger-prior variants
and the baselines, all on the same mixture problem (solvers and baselines are chosen by name)."""

from __future__ import annotations

import logging

import numpy as np

from workflows.baselines import BASELINES
from cluster.runtime import WorkerLayout
from workflows.config import MixtureSpec, RunConfig
from workflows.jobs.examples import ExampleSource
from workflows.run.plan import Plan
from workflows.solvers import SOLVERS, MixtureProblem, SolveContext, SolverResult
from workflows.stages.base import RunContext, Stage
from workflows.stages.featurize import model_source
from workflows.stages.validate import rotation_seed

log = logging.getLogger(__name__)


def solve_all(spec: MixtureSpec, problem: MixtureProblem, ctx: SolveContext) -> tuple[dict, dict]:
    """Primary and comparison solvers (plus the primary's stronger-prior variants when validation will
    measure them), then baselines: name → SolverResult each."""
    solved: dict[str, SolverResult] = {}
    for name in dict.fromkeys([spec.solver, *spec.compare]):
        solved[name] = SOLVERS.configured(name, spec.options).solve(problem, ctx)
        log.info("solver %s: %s", name, dict(zip(problem.domains, solved[name].weights.round(4).tolist())))
    if spec.validation.enabled:
        primary = SOLVERS.configured(spec.solver, spec.options)
        for factor in spec.validation.beta_path:
            variant = primary.stronger_prior(problem, factor)
            if variant is not None:
                label, solver = variant
                solved[f"{spec.solver}@{label}"] = solver.solve(problem, ctx)
    baselines = {name: BASELINES.configured(name, spec.options).solve(problem, ctx) for name in spec.baselines}
    return solved, baselines


def solve_context(cfg: RunConfig, plan: Plan, model_uri: str, layout: WorkerLayout) -> SolveContext:
    """The slices of the run that solvers may use (see :class:`workflows.solvers.base.SolveContext`)."""
    spec = cfg.mixture.validation
    return SolveContext(plan=plan, model=model_source(cfg, model_uri), examples=ExampleSource.of(cfg),
                        layout=layout, options=cfg.mixture.options,
                        draw_seed=rotation_seed(cfg, model_uri, spec) - spec.seed)


def _record(results: dict[str, SolverResult]) -> dict:
    return {n: {"weights": r.weights.tolist(), "report": r.report} for n, r in results.items()}


def _restore(record: dict) -> dict[str, SolverResult]:
    return {n: SolverResult(np.asarray(r["weights"], dtype=np.float64), r["report"]) for n, r in record.items()}


class SolveStage(Stage):
    """Every configured solver and baseline on the aggregated problem; ``stages/solve.json``."""

    name = "solve"

    def run(self, ctx: RunContext) -> None:
        solve_ctx = solve_context(ctx.cfg, ctx.plan, ctx.model_uri, ctx.layout)
        ctx.solved, ctx.baselines = solve_all(ctx.cfg.mixture, ctx.problem, solve_ctx)
        ctx.save_record(self.name, {"solved": _record(ctx.solved), "baselines": _record(ctx.baselines)})

    def load(self, ctx: RunContext) -> None:
        record = ctx.load_record(self.name)
        ctx.solved, ctx.baselines = _restore(record["solved"]), _restore(record["baselines"])
