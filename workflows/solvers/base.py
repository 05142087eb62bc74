"""One interface for every mixture solver.

A solver receives a :class:`MixtureProblem` (group influence as a domains × targets matrix, the scores
the configured normalisation derives from it, bounds, the fixed prior, the reference mixture and the
next stage's token budget) and returns a :class:`SolverResult`: weights plus its own report section.
Solvers that only do arithmetic (``measures = False``) are also re-run on bootstrap replicates of the
influence matrix to give weight confidence intervals; solvers that train probes (``measures = True``)
get a :class:`SolveContext` with the run's plan, checkpoint, example source and Ray worker layout.

Adding a solver: one file in this folder that defines a :class:`Solver` subclass with a ``name``, an
``Options`` pydantic model (its config section ``mixture.options.<name>``) and ``solve``, plus one
line in ``workflows/solvers/__init__.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from operators.mixture.budget import Budget
from operators.influence.group import combine_targets, normalize_per_target
from operators.influence.shrinkage import shrink
from cluster.runtime import WorkerLayout
from operators.model.loading import ModelSource
from workflows.jobs.examples import ExampleSource
from workflows.registry import Registry
from workflows.run.plan import Plan


@dataclass(frozen=True)
class MixtureProblem:
    """Everything a solver may use; arrays are in ``domains`` order (K) and ``targets`` order (V)."""

    domains: list[str]
    targets: list[str]
    target_weights: np.ndarray  # (V,), sums to 1
    gi: np.ndarray  # (K, V) raw group influence: nats of target loss per unit step (benefit sign)
    normalize: str  # how `scores` were derived from `gi` (operators.influence.group.normalize_per_target)
    lower: np.ndarray  # (K,) box and reuse caps included
    upper: np.ndarray
    prior: np.ndarray  # fixed anchor of regularised solvers (does not move between refreshes)
    prior_kind: str
    reference: np.ndarray  # what a refresh must beat: the previous mixture, else the prior
    reference_kind: str
    budget: Budget
    previous_weights: dict[str, float] | None = None
    info: dict = field(default_factory=dict)
    gi_se: np.ndarray | None = None  # (K, V) standard errors of gi (bootstrap); None: unknown
    shrinkage: str = "empirical_bayes"  # influence.shrinkage: how gi_se is used (or "none")

    @property
    def gi_evidence(self) -> np.ndarray:
        """gi with differences that are within noise pulled to the pooled mean (when gi_se is known)."""
        if self.gi_se is None or self.shrinkage == "none":
            return self.gi
        return shrink(self.gi, self.gi_se)[0]

    @property
    def gi_normalized(self) -> np.ndarray:
        """The solver's scale: the evidence-weighted matrix, normalised with scales of the raw one."""
        return normalize_per_target(self.gi_evidence, self.normalize, reference=self.gi)  # type: ignore[arg-type]

    @property
    def scores(self) -> np.ndarray:
        """(K,) target-weighted domain scores on the solver scale."""
        return combine_targets(self.gi_normalized, self.target_weights)

    def with_gi(self, gi: np.ndarray, gi_se: np.ndarray | None = None) -> MixtureProblem:
        """The same problem for another influence matrix (a bootstrap replicate keeps the standard errors)."""
        se = self.gi_se if gi_se is None else np.asarray(gi_se, dtype=np.float64)
        return replace(self, gi=np.asarray(gi, dtype=np.float64), gi_se=se)

    def epochs(self, w: np.ndarray) -> dict[str, float]:
        return {d: float(e) for d, e in zip(self.domains, self.budget.epochs(w))}


@dataclass
class SolverResult:
    weights: np.ndarray
    report: dict = field(default_factory=dict)  # the solver's own section of report.json


@dataclass
class SolveContext:
    """What solvers that read data or train probes may use (never the run config): the shard plan, the
    checkpoint, where examples come from, the Ray worker layout, the configured options of every
    solver (a solver may build another, as TiKMiX-M builds TiKMiX-D), and the checkpoint's draw offset
    for validation examples and probe seeds (``validation.rotate``: fresh ones per checkpoint)."""

    plan: Plan
    model: ModelSource
    examples: ExampleSource
    layout: WorkerLayout
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    draw_seed: int = 0


class Solver(ABC):
    """Base class of mixture solvers; subclasses set ``name``, ``Options`` and implement ``solve``."""

    name: ClassVar[str]
    measures: ClassVar[bool] = False  # True: trains probes, needs a SolveContext, skipped in bootstrap

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, options: BaseModel | None = None) -> None:
        self.options = options if options is not None else self.Options()

    @abstractmethod
    def solve(self, problem: MixtureProblem, ctx: SolveContext | None = None) -> SolverResult:
        """Weights (K,) on the bounded simplex, plus a report section."""

    def stronger_prior(self, problem: MixtureProblem, factor: float) -> tuple[str, Solver] | None:
        """This solver pulled ``factor`` times harder toward its prior, with a short label for it (e.g.
        ``beta=2``), or None when it has no such pull. Validation measures these variants as candidates."""
        return None

    def bootstrap_solver(self, options: dict[str, dict[str, Any]]) -> Solver:
        """The arithmetic solver re-run on bootstrap replicates of the influence matrix (weight CIs):
        this one, unless it trains probes (then it names a cheap stand-in)."""
        if self.measures:
            raise NotImplementedError(f"{self.name} trains probes: it must name a bootstrap stand-in")
        return self


SOLVERS: Registry[Solver] = Registry("mixture solver")
