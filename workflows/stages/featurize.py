"""Run the featurization stage of a plan on the Ray actor pool (skipping completed shards)."""

from __future__ import annotations

import logging

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
from workflows.run.plan import Plan
from cluster.progress import Progress

log = logging.getLogger(__name__)
FEATURIZER_FILE = "featurizer.json"


class ShardFailures(InfluMixError):
    """Some shards failed on every attempt; completed shards are kept and a rerun resumes."""


class FeaturizerFactory:
    """Picklable factory that each actor calls once to build its ShardFeaturizer (from a job slice)."""

    def __init__(self, job: FeaturizeJob) -> None:
        self.job = job

    def __call__(self, worker: str, device: str):
        return ShardFeaturizer(self.job, device, worker)


def featurize_job(cfg: RunConfig, model_uri: str, root: str) -> FeaturizeJob:
    """The slice of the run config a featurizing worker needs."""
    return FeaturizeJob(examples=ExampleSource.of(cfg), model=model_source(cfg, model_uri), featurize=cfg.featurize,
                        collect_kfac=cfg.influence.preconditioner == "kfac", root=root)


def model_source(cfg: RunConfig, model_uri: str) -> ModelSource:
    return ModelSource(model_uri, cfg.storage, cfg.model.cache_dir, cfg.model.dtype, cfg.model.optimizer_state)


def check_workers_agree(workers: list[dict]) -> str:
    """Every actor must hold the same model weights and projector (identical features)."""
    prints = {w["worker"]: w["fingerprint"] for w in workers}
    if len(set(prints.values())) != 1:
        raise InfluMixError(f"workers disagree on model/projector fingerprints: {prints}")
    return next(iter(prints.values()))


def record_featurizer(plan: Plan, worker: dict, spec: storage.StorageSpec) -> dict:
    """Write featurizer.json once; later attempts must match it (same model + projector)."""
    uri = storage.join(plan.root, FEATURIZER_FILE)
    if storage.exists(uri, spec):
        recorded = storage.read_json(uri, spec)
        if recorded["fingerprint"] != worker["fingerprint"]:
            raise InfluMixError(
                f"run {plan.run_id} was featurized with model/projector {recorded['fingerprint']} but the "
                f"workers now load {worker['fingerprint']}; the checkpoint changed under the same run id. "
                "Start a new run (run_id=...)."
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

    done = datastore.list_completions(plan.root, cfg.storage)
    todo = [t for t in plan.tasks if t.shard_id not in done]
    log.info("run %s: %d shards, %d already complete, %d to featurize", plan.run_id, len(plan.tasks),
             len(plan.tasks) - len(todo), len(todo))
    featurizer_uri = storage.join(plan.root, FEATURIZER_FILE)
    if not todo and storage.exists(featurizer_uri, cfg.storage):
        return storage.read_json(featurizer_uri, cfg.storage)
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
    pool = ShardPool(FeaturizerFactory(featurize_job(cfg, model_uri, plan.root)), worker_layout(cfg.cluster), cfg.cluster,
                     plan.run_id)
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
    return info


class FeaturizeStage(Stage):
    """Features of every corpus and target shard at each pinned checkpoint (``features/``, ``_done/``,
    ``featurizer.json``), then the run-level duplicate-id check."""

    name = "featurize"

    def run(self, ctx: RunContext, require_done: bool = False) -> None:
        cfg = ctx.cfg
        ctx.checkpoints = plan_checkpoints(cfg, ctx.plan, ctx.model_uri)  # [model_uri] unless averaging
        ctx.featurizer = featurize_all(
            ctx.checkpoints, lambda p, uri: run_featurize(cfg, p, uri, ctx.metrics, require_done=require_done))
        check_unique_ids(cfg, ctx.checkpoints.newest)

    def load(self, ctx: RunContext) -> None:
        self.run(ctx, require_done=True)
