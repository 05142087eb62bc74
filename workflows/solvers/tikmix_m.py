"""TiKMiX-M: probe-labelled local search around TiKMiX-D's answer (workflows/solvers/tikmix_m_search.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from operators.training.probing import ProbeSpec
from workflows.solvers.base import SOLVERS, MixtureProblem, SolveContext, Solver, SolverResult
from workflows.solvers.tikmix_m_search import run_tikmix_m


@SOLVERS.register
class TikmixM(Solver):
    name = "tikmix_m"
    measures = True

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        candidates: int = Field(default=24, ge=4, description="Latin Hypercube candidates (w_D is added)")
        explore: int = Field(default=8, ge=0, description=(
            "extra labelled Dirichlet mixtures around the reference, beyond the box around w_D"))
        explore_heavy: bool = Field(default=True, description=(
            "also label a 0.65-heavy mixture for each domain with a positive score"))
        scale_low: float = Field(default=0.5, gt=0, le=1, description="box: scale_low·w_D per domain")
        scale_high: float = Field(default=2.0, ge=1, description="box: scale_high·w_D per domain")
        seeds: int = Field(default=3, ge=2, description="probe seeds per candidate (label noise is measured)")
        steps: int = Field(default=32, ge=1, description="optimizer steps per probe")
        batch_size: int = Field(default=8, ge=1)
        reference_examples: int = Field(default=96, ge=8, description="validation-split target examples")
        max_pool: int = Field(default=96, ge=1, description="largest per-domain probe pool (examples)")
        budget_scaled_pools: bool = Field(default=True, description="pools sized like the validation stage")
        bootstrap: int = Field(default=64, ge=8, description="ridge refits for the prediction std")
        kappa: float = Field(default=1.0, ge=0, description="choose by predicted mean − kappa·std")
        iterations: int = Field(default=8, ge=1, description="Algorithm 1 rounds")
        samples: int = Field(default=2048, ge=16, description="Dirichlet samples per round")
        alpha_max: float = Field(default=1000.0, gt=0, description="first (tightest) Dirichlet concentration")
        alpha_min: float = Field(default=30.0, gt=0, description="last (widest) Dirichlet concentration")
        top_k: int = Field(default=32, ge=1)
        min_cv_r2: float = Field(default=0.2, description=(
            "fall back to TiKMiX-D without searching when the regression's leave-one-out R² is not above this"))
        confirm_seeds: int = Field(default=4, ge=2, description="fresh seeds measuring w_M against w_D")
        margin: float = Field(default=2.0, ge=0, description="w_M must beat w_D by this many paired standard errors")
        probe: ProbeSpec = ProbeSpec(lr=1e-3, reference_batch_size=64)
        seed: int = 0

        @model_validator(mode="after")
        def _alphas(self) -> TikmixM.Options:
            if self.alpha_min > self.alpha_max:
                raise ValueError(f"alpha_min ({self.alpha_min}) exceeds alpha_max ({self.alpha_max})")
            return self

    def bootstrap_solver(self, options: dict[str, dict]) -> Solver:
        """Bootstrap replicates re-solve TiKMiX-D, the centre of this solver's search."""
        return SOLVERS.configured("tikmix_d", options)

    def solve(self, problem: MixtureProblem, ctx: SolveContext | None = None) -> SolverResult:
        if ctx is None:
            raise ValueError("tikmix_m trains probes: it needs a SolveContext")
        weights, report = run_tikmix_m(ctx, problem, self.options)
        return SolverResult(weights, report)
