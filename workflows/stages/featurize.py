"""Run the featurization stage of a plan on the Ray actor pool (skipping completed shards)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from operators.features import datastore

from operators.io import storage
from operators.errors import InfluMixError
from operators.model.loading import ModelSource
from workflows.config import RunConfig
from workflows.jobs.examples import ExampleSource
from workflows.jobs.featurize_shard import FeaturizeJob, ShardFeaturizer
from workflows.run.integrity import check_unique_ids
from workflows.stages.base import RunContext, Stage, StageNotRun
from workflows.stages.checkpoint_average import featurize_all, plan_checkpoints
from workflows.run.plan import Plan, plan_completions
from cluster.progress import Progress

log = logging.getLogger(__name__)
T = TypeVar("T")
FEATURIZER_FILE = "featurizer.json"


class ShardFailures(InfluMixError):
    """Some shards failed on every attempt; completed shards are kept and a rerun resumes."""


class FeaturizerFactory:
    """Picklable factory that each actor calls once to build its ShardFeaturizer (from a job slice)."""

    def __init__(self, job: FeaturizeJob) -> None:
        self.job = job

    def __call__(self, worker: str, device: str):
        return ShardFeaturizer(self.job, device, worker)


def featurize_job(cfg: RunConfig, model_uri: str, root: str, store: str = "") -> FeaturizeJob:
    """The slice of the run config a featurizing worker needs (``store``: the datastore folder)."""
    return FeaturizeJob(examples=ExampleSource.of(cfg), model=model_source(cfg, model_uri), featurize=cfg.featurize,
                        collect_kfac=cfg.influence.preconditioner == "kfac", root=root, store=store)


def model_source(cfg: RunConfig, model_uri: str) -> ModelSource:
    return ModelSource(model_uri, cfg.storage, cfg.model.cache_dir, cfg.model.dtype, cfg.model.optimizer_state)


def check_workers_agree(workers: list[dict]) -> str:
    """Every actor must hold the same model weights and projector (identical features)."""
    prints = {w["worker"]: w["fingerprint"] for w in workers}
    if len(set(prints.values())) != 1:
        raise InfluMixError(f"workers disagree on model/projector fingerprints: {prints}")
    return next(iter(prints.values()))


def featurizer_uri(plan: Plan) -> str:
    """featurizer.json of the plan's datastore (the run root for plans without one)."""
    return storage.join(plan.store or plan.root, FEATURIZER_FILE)


def record_featurizer(plan: Plan, worker: dict, spec: storage.StorageSpec) -> dict:
    """Write featurizer.json once; later attempts must match it (same model + projector)."""
    uri = featurizer_uri(plan)
    if storage.exists(uri, spec):
        recorded = storage.read_json(uri, spec)
        if recorded["fingerprint"] != worker["fingerprint"]:
            raise InfluMixError(
                f"the features at {plan.store or plan.root} were made with model/projector "
                f"{recorded['fingerprint']} but the workers now load {worker['fingerprint']}: the checkpoint "
                "changed in place although its files list the same names, sizes and versions. Move the "
                f"stale datastore folder {plan.store or plan.root} aside and rerun."
            )
        return recorded
    info = {k: worker[k] for k in ("fingerprint", "model", "featurizer")}
    storage.write_json_atomic(uri, info, spec)
    return info


def run_featurize(cfg: RunConfig, plan: Plan, model_uri: str, metrics=None, require_done: bool = False) -> dict:
    """Featurize every shard of the plan that has no completion record yet. Returns featurizer.json.
    With ``require_done`` a missing shard is an error instead (a run that starts after featurizing)."""
    from cluster.actor_pool import ShardPool
    from cluster.runtime import worker_layout

    done = reusable_completions(plan, cfg.storage)
    todo = [t for t in plan.tasks if t.shard_id not in done]
    log.info("run %s: %d shards, %d reused from the datastore %s, %d to featurize", plan.run_id,
             len(plan.tasks), len(plan.tasks) - len(todo), plan.store or plan.root, len(todo))
    summary = {"shards": len(plan.tasks), "reused": len(plan.tasks) - len(todo),
               "featurized": [t.shard_id for t in todo], "store": plan.store or plan.root}
    if not todo and storage.exists(featurizer_uri(plan), cfg.storage):
        return {**storage.read_json(featurizer_uri(plan), cfg.storage), "datastore": summary}
    if require_done:
        raise StageNotRun(f"run {plan.run_id}: {len(todo)} of {len(plan.tasks)} shards are not featurized "
                          f"under {plan.root}; run the featurize stage first")

    def sink(snapshot: dict) -> None:
        storage.write_json_atomic(storage.join(plan.root, "progress.json"), snapshot, cfg.storage)
        if metrics is not None:
            metrics.progress("featurize", snapshot["total"], snapshot["done"], snapshot["failed"],
                             snapshot["examples_per_s"], snapshot["eta_s"] or 0.0)

    progress = Progress("featurize", len(plan.tasks), already_done=len(plan.tasks) - len(todo),
                        interval_s=cfg.cluster.progress_interval_s, sink=sink)
    pool = ShardPool(FeaturizerFactory(featurize_job(cfg, model_uri, plan.root, plan.store)),
                     worker_layout(cfg.cluster), cfg.cluster, plan.run_id)
    try:
        workers = pool.start()
        check_workers_agree(workers)
        info = record_featurizer(plan, workers[0], cfg.storage)
        result = pool.run(todo, progress)
    finally:
        pool.shutdown()
    progress.report(force=True)
    if result.failures:
        lines = "\n".join(f"  {sid}: {err}" for sid, err in sorted(result.failures.items()))
        raise ShardFailures(f"{len(result.failures)} shard(s) failed (input errors are not retried, others "
                            f"up to {cfg.cluster.shard_attempts} attempts; completed shards are kept, fix the "
                            f"input and rerun to resume):\n{lines}")
    info["workers"] = workers
    info["datastore"] = summary
    return info


def reusable_completions(plan: Plan, spec: storage.StorageSpec) -> dict[str, datastore.CompletionRecord]:
    """Completion records of the plan's shards whose parts have the recorded sizes. A shard with a
    missing or resized part loses its record (one warning naming the part) and is featurized again."""
    roots = plan.shard_roots()
    done = plan_completions(plan, spec)
    for sid, record in list(done.items()):
        bad = datastore.check_part_sizes(record, spec)
        if bad is not None:
            log.warning("feature part %s: %s; featurizing shard %s again", bad.part_uri, bad.reason, sid)
            datastore.invalidate(roots[sid], sid, spec)
            del done[sid]
    return done


#: How many times one stage repairs corrupt feature parts before giving up.
MAX_REPAIRS = 3


def repair_parts(ctx: RunContext, fn: Callable[[], T]) -> T:
    """``fn()``; when it meets a feature part that fails its check (:class:`FeaturePartCorrupt`, also
    raised inside Ray tasks), drop that shard's record with one warning naming the part, featurize it
    again and call ``fn`` again."""
    for attempt in range(MAX_REPAIRS + 1):
        try:
            return fn()
        except datastore.FeaturePartCorrupt as exc:
            cause = exc if getattr(exc, "part_uri", None) else getattr(exc, "cause", exc)
            if attempt == MAX_REPAIRS:  # one line, not Ray's wrapped traceback
                raise datastore.FeaturePartCorrupt(
                    getattr(cause, "part_uri", "?"), getattr(cause, "shard_id", "?"),
                    f"{getattr(cause, 'reason', cause)} again after {MAX_REPAIRS} repairs") from None
            _invalidate_part(ctx, cause)
            before = ctx.featurizer.get("datastore", {})
            ctx.featurizer = featurize_all(
                ctx.checkpoints, lambda p, uri: run_featurize(ctx.cfg, p, uri, ctx.metrics))
            repaired = ctx.featurizer.get("datastore", {}).get("featurized", [])
            ctx.featurizer["datastore"] = {**before, "repaired": [*before.get("repaired", []), *repaired]}
            ctx.save_record(FeaturizeStage.name, {"datastore": ctx.featurizer["datastore"]})
    raise AssertionError("unreachable")


def _invalidate_part(ctx: RunContext, exc: BaseException) -> None:
    part, sid = getattr(exc, "part_uri", None), getattr(exc, "shard_id", None)
    plans = ctx.checkpoints.plans if ctx.checkpoints else (ctx.plan,)
    found = False
    for plan in plans:
        roots = plan.shard_roots()
        if sid in roots and part and part.startswith(roots[sid].rstrip("/") + "/"):
            log.warning("feature part %s: %s; featurizing shard %s again", part, exc.reason, sid)
            datastore.invalidate(roots[sid], sid, ctx.cfg.storage)
            found = True
    if not found:  # the error did not say which part: check every shard's checksums
        for plan in plans:
            roots = plan.shard_roots()
            for shard, record in plan_completions(plan, ctx.cfg.storage).items():
                for bad in datastore.verify_shard(roots[shard], record, ctx.cfg.storage)[:1]:
                    log.warning("feature part %s: %s; featurizing shard %s again", bad.part_uri, bad.reason, shard)
                    datastore.invalidate(roots[shard], shard, ctx.cfg.storage)
                    found = True
    if not found:
        raise exc


class FeaturizeStage(Stage):
    """Features of every corpus and target shard at each pinned checkpoint, made or reused in the feature
    datastore (``featurizer.json``, per shard ``features/``, ``_done/``), then the run-level duplicate-id
    check. Its record ``stages/featurize.json`` says which shards it featurized, reused and repaired."""

    name = "featurize"

    def run(self, ctx: RunContext, require_done: bool = False) -> None:
        cfg = ctx.cfg
        ctx.checkpoints = plan_checkpoints(cfg, ctx.plan, ctx.model_uri)  # [model_uri] unless averaging
        ctx.featurizer = featurize_all(
            ctx.checkpoints, lambda p, uri: run_featurize(cfg, p, uri, ctx.metrics, require_done=require_done))
        repair_parts(ctx, lambda: check_unique_ids(cfg, ctx.checkpoints.newest))
        if not require_done:
            ctx.save_record(self.name, {"datastore": ctx.featurizer.get("datastore", {})})

    def load(self, ctx: RunContext) -> None:
        self.run(ctx, require_done=True)
