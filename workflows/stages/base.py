"""What every stage of a refresh shares: the :class:`Stage` interface and the :class:`RunContext` it runs in.

A refresh is a list of stages (``workflows/mixture_refresh.py``). Each stage reads what earlier stages
left in the context, writes its outputs to storage under the run root, and records them in the context
for the stages after it. ``influmix run --until <stage>`` stops after a stage; ``--from <stage>`` starts
at one, and every stage before it only *loads* its outputs (:meth:`Stage.load`), which fails with a clear
error when that stage has not run for this run.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from operators.errors import ConfigError
from operators.io import storage

if TYPE_CHECKING:
    from cluster.runtime import WorkerLayout
    from operators.manifest.schema import Manifest
    from workflows.config import RunConfig
    from workflows.run.plan import Plan
    from workflows.solvers.base import MixtureProblem, SolverResult
    from workflows.stages.aggregate import InfluenceResult
    from workflows.stages.checkpoint_average import CheckpointSet

STAGES_DIR = "stages"


class StageNotRun(ConfigError):
    """A later stage was asked to start although an earlier one has no outputs for this run."""


@dataclass
class RunContext:
    """The driver's state during one run: inputs pinned at start, then each stage's outputs."""

    cfg: RunConfig
    plan: Plan
    model_uri: str
    pins: dict
    layout: WorkerLayout
    lease: Any = None
    metrics: Any = None
    started: float = field(default_factory=time.monotonic)
    checkpoints: CheckpointSet | None = None
    preflight: dict = field(default_factory=dict)
    featurizer: dict = field(default_factory=dict)
    previous_uri: str | None = None
    previous: Manifest | None = None
    problem: MixtureProblem | None = None
    influence: InfluenceResult | None = None
    solved: dict[str, SolverResult] = field(default_factory=dict)
    baselines: dict[str, SolverResult] = field(default_factory=dict)
    validation: dict | None = None
    selection: Any = None
    report: dict = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def stage_uri(self, name: str) -> str:
        """Where a stage keeps its small JSON record under the run root."""
        return storage.join(self.plan.root, STAGES_DIR, f"{name}.json")

    def save_record(self, name: str, record: dict) -> None:
        if self.lease is not None:
            self.lease.check()  # a driver that lost its lease writes nothing more into the run
        storage.write_json_atomic(self.stage_uri(name), record, self.cfg.storage)

    def load_record(self, name: str) -> dict:
        uri = self.stage_uri(name)
        if not storage.exists(uri, self.cfg.storage):
            raise StageNotRun(f"stage {name!r} has not run for run {self.plan.run_id} ({uri} is missing); "
                              f"run it first (influmix run ... --until {name}) or start earlier")
        return storage.read_json(uri, self.cfg.storage)


class Stage(ABC):
    """One step of a refresh. Subclasses set ``name`` and implement :meth:`run`; a stage whose outputs can
    be restored from storage implements :meth:`load` (used when a run starts at a later stage)."""

    name: ClassVar[str]

    def enabled(self, ctx: RunContext) -> bool:
        """Whether this stage applies to the run (e.g. MATES selection only when ``mates.enabled``)."""
        return True

    @abstractmethod
    def run(self, ctx: RunContext) -> None:
        """Compute this stage's outputs (resuming from what is on storage) and record them in ``ctx``."""

    def load(self, ctx: RunContext) -> None:
        """Restore this stage's outputs from storage without recomputing them."""
        raise StageNotRun(f"stage {self.name!r} cannot be skipped: start the run at or before it")


def published_weights(ctx: RunContext) -> tuple[Any, str]:
    """(weights, name) of the mixture this run publishes: validation's decision when it ran, else the
    primary solver's answer."""
    if ctx.validation is not None:
        return ctx.validation["published_weights"], ctx.validation["published"]
    primary = ctx.cfg.mixture.solver
    return ctx.solved[primary].weights, primary
