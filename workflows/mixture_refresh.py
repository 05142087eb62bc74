"""The main workflow, as a list of stages: featurize → aggregate → solve → validate → select → publish.

Before the stages, the driver pins the run's inputs (checkpoint, previous manifest), runs the preflight
checks (workflows/stages/preflight.py: no Ray, no model), records the shard plan and takes the run lease; the stages then run in order (``workflows/stages/``). ``until`` stops after
a stage, ``start`` begins at one (earlier stages only load their outputs from storage).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field

from operators.errors import ConfigError
from operators.features import datastore
from operators.io import storage
from workflows.config import BUILTIN_MODEL, RunConfig, dump_config
from workflows.run.lease import cluster_lost, run_lease
from workflows.run.pins import pin_run
from workflows.run.plan import Plan, build_plan, check_or_record_plan, plan_completions
from workflows.stages.aggregate import AggregateStage, InfluenceResult
from workflows.stages.base import RunContext, Stage
from workflows.stages.featurize import FeaturizeStage
from workflows.stages.mates import SelectStage
from workflows.stages.preflight import run_preflight
from workflows.stages.publish import PublishStage
from workflows.stages.solve import SolveStage
from workflows.stages.validate import ValidateStage

log = logging.getLogger(__name__)

#: The stages of a refresh, in order. A new stage is one class in workflows/stages/ plus one entry here.
STAGES: tuple[Stage, ...] = (FeaturizeStage(), AggregateStage(), SolveStage(), ValidateStage(), SelectStage(),
                             PublishStage())
STAGE_NAMES = tuple(s.name for s in STAGES)


@dataclass
class RefreshResult:
    run_id: str
    run_root: str
    manifest_uri: str | None
    weights: dict[str, float]
    outputs: dict[str, str]
    influence: InfluenceResult | None = field(default=None, repr=False)
    report: dict = field(default_factory=dict, repr=False)
    stages: tuple[str, ...] = ()


def resolve_model_uri(cfg: RunConfig) -> str:
    """checkpoint_root (latest step) > the newest of model.checkpoints > builtin tiny model (built once,
    cached) > model.path."""
    if cfg.model.checkpoint_root:
        from operators.model.checkpoints import find_latest_checkpoint

        return find_latest_checkpoint(cfg.model.checkpoint_root, cfg.storage)
    if cfg.model.checkpoints:
        return cfg.model.checkpoints[-1]
    if cfg.model.path == BUILTIN_MODEL:
        from workflows.assets import ensure_default_checkpoint

        return ensure_default_checkpoint(cfg.model.cache_dir, cfg.model.tiny)
    return cfg.model.path


def _check_storage(cfg: RunConfig) -> None:
    for uri in [cfg.output_uri, *cfg.corpus.paths]:
        storage.check_reachable(uri, cfg.storage)


def prepare_run(cfg: RunConfig, pins: dict | None = None) -> tuple[Plan, str]:
    """Plan, resolve the model and record the plan (the caller has checked storage: `_check_storage`)."""
    plan = build_plan(cfg)  # cheap input validation first: missing shards fail before any model work
    model_uri = resolve_model_uri(cfg)
    resumed = check_or_record_plan(plan, cfg.storage, pins)
    if not resumed:
        storage.write_text_atomic(storage.join(plan.root, "config.yaml"), dump_config(with_run_id(cfg, plan)),
                                  cfg.storage)
    log.info("run %s (%s) at %s; model %s", plan.run_id, "resuming" if resumed else "new", plan.root, model_uri)
    return plan, model_uri


def stage_span(start: str | None = None, until: str | None = None) -> tuple[list[Stage], list[Stage]]:
    """(stages only loaded, stages run) for a run from ``start`` to ``until`` (names in STAGE_NAMES)."""
    for name, what in ((start, "--from"), (until, "--until")):
        if name is not None and name not in STAGE_NAMES:
            raise ConfigError(f"{what} {name!r} is not a stage; stages: {', '.join(STAGE_NAMES)}")
    first = STAGE_NAMES.index(start) if start else 0
    last = STAGE_NAMES.index(until) if until else len(STAGES) - 1
    if first > last:
        raise ConfigError(f"--from {start} comes after --until {until}")
    return list(STAGES[:first]), list(STAGES[first:last + 1])


def run_mixture_refresh(cfg: RunConfig, start: str | None = None, until: str | None = None) -> RefreshResult:
    """Run (or resume) one mixture refresh and publish its manifest; ``start``/``until`` run a span of
    stages only (see :data:`STAGES`)."""
    loaded, to_run = stage_span(start, until)
    started = time.monotonic()
    _check_storage(cfg)
    cfg, pins = pin_run(cfg)  # checkpoint + previous manifest, resolved once per run (workflows/run/pins.py)
    checks = run_preflight(cfg, lambda: resolve_model_uri(cfg))  # every cheap check, before anything is recorded
    plan, model_uri = prepare_run(cfg, pins)
    cfg = with_run_id(cfg, plan)  # the derived run id (workflows/run/keys.py) from here on
    finished = _finished(cfg, plan)
    if finished is not None and not _damaged_parts(cfg, plan):
        return finished
    with run_lease(cfg, plan) as lease:  # one driver per run id; a waiter finds the result when done
        finished = _finished(cfg, plan)
        if finished is not None:
            if _damaged_parts(cfg, plan):  # repair the datastore other runs share; the result stands
                _run_stages(cfg, plan, model_uri, pins, lease, [], [STAGES[0]])
            return finished
        return _run_stages(cfg, plan, model_uri, pins, lease, loaded, to_run, checks, started)


def with_run_id(cfg: RunConfig, plan: Plan) -> RunConfig:
    """``cfg`` naming the plan's run id (derived from the run's keys unless the config gave one)."""
    return cfg if cfg.run_id == plan.run_id else cfg.model_copy(update={"run_id": plan.run_id})


def _damaged_parts(cfg: RunConfig, plan: Plan) -> bool:
    """Whether a finished shard of the plan has a missing or resized feature part (sizes only)."""
    return any(datastore.check_part_sizes(r, cfg.storage) is not None
               for r in plan_completions(plan, cfg.storage).values())


def _run_stages(cfg: RunConfig, plan: Plan, model_uri: str, pins: dict, lease, loaded: list[Stage],
                to_run: list[Stage], preflight: dict | None = None, started: float | None = None) -> RefreshResult:
    from cluster import cancel
    from cluster.metrics import DriverMetrics
    from cluster.runtime import gcs_address, init_ray, layout_or_local
    from cluster.watch import ClusterWatch

    started = time.monotonic() if started is None else started
    cancel.reset()
    lease.on_lost.append(lambda reason: cancel.request_stop(reason, exit_code=4))
    started_ray = init_ray(cfg.cluster)
    watch = ClusterWatch(gcs_address(), on_lost=cluster_lost(lease)).start() if gcs_address() else None
    try:
        ctx = RunContext(cfg=cfg, plan=plan, model_uri=model_uri, pins=pins, layout=layout_or_local(cfg.cluster),
                         lease=lease, metrics=DriverMetrics(plan.run_id), started=started,
                         preflight=preflight or {})
        for stage in loaded:
            if stage.enabled(ctx):
                stage.load(ctx)
        for stage in to_run:
            if not stage.enabled(ctx):
                continue
            lease.check()  # a driver that lost its lease starts no further stage
            t0 = time.monotonic()
            stage.run(ctx)
            ctx.timings[stage.name] = time.monotonic() - t0
            log.info("stage %s done in %.1fs", stage.name, ctx.timings[stage.name])
        done = tuple(s.name for s in to_run if s.enabled(ctx))
        if ctx.outputs:
            weights = ctx.report["weights"]
            return RefreshResult(run_id=plan.run_id, run_root=plan.root, manifest_uri=ctx.outputs["manifest.json"],
                                 weights=weights, outputs=ctx.outputs, influence=ctx.influence, report=ctx.report,
                                 stages=done)
        return RefreshResult(run_id=plan.run_id, run_root=plan.root, manifest_uri=None, weights={}, outputs={},
                             influence=ctx.influence, report=ctx.report, stages=done)
    finally:
        if watch is not None:
            watch.stop()
        if started_ray:
            from cluster.runtime import shutdown_ray

            shutdown_ray(keep_logs=sys.exc_info()[0] is not None)


def _finished(cfg: RunConfig, plan: Plan) -> RefreshResult | None:
    """A run whose `_SUCCESS` exists is not recomputed: return its published result."""
    success = storage.join(plan.root, "_SUCCESS")
    if not storage.exists(success, cfg.storage):
        return None
    from operators.manifest.schema import parse_manifest, weights_of

    uri = storage.read_json(success, cfg.storage)["manifest_uri"]
    manifest = parse_manifest(storage.read_bytes(uri, cfg.storage))
    report_uri = storage.join(plan.root, "report.json")
    report = storage.read_json(report_uri, cfg.storage) if storage.exists(report_uri, cfg.storage) else {}
    log.info("run %s already finished; manifest %s", plan.run_id, uri)
    return RefreshResult(run_id=plan.run_id, run_root=plan.root, manifest_uri=uri, weights=weights_of(manifest),
                         outputs={"manifest.json": uri}, influence=None, report=report)
