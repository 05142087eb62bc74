"""Shard plan of a run: which corpus and target shards to featurize, and where outputs go.

A run's own outputs (stage records, influence, manifests) live under its run root
``<output>/runs/<run_id>``; its features live in the shared feature datastore under ``Plan.store``
(``<output>/datastore/<featurizer key>``), one folder per shard key (workflows/run/keys.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from operators.errors import ConfigError
from operators.features import datastore
from operators.io import storage
from operators.io.corpus import CorpusSpec, TargetSpec, discover_shards
from workflows.run.keys import analysis_key, featurizer_store, read_settings, shard_key

if TYPE_CHECKING:
    from workflows.config import RunConfig

log = logging.getLogger(__name__)
PLAN_FILE = "plan.json"


class ShardTask(BaseModel):
    """One unit of work: featurize one input shard (corpus or target set) into one feature shard."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shard_id: str
    uri: str
    format: Literal["parquet", "jsonl"]
    role: Literal["corpus", "target"]
    target_name: str | None = None
    size_bytes: int | None = None
    version: str | None = None  # ETag / version id / mtime of the input when planned
    key: str | None = None  # datastore shard key (workflows/run/keys.py); None: features under the run root


def feature_root(store: str, root: str, task: ShardTask) -> str:
    """Where one shard's features, K-FAC sums and completion record live: its datastore folder
    ``<store>/shards/<key>``, or the run root itself for plans without a datastore."""
    return storage.join(store, "shards", task.key) if store and task.key else root


@dataclass(frozen=True)
class Plan:
    run_id: str
    root: str
    tasks: tuple[ShardTask, ...]
    store: str = ""  # the featurizer's datastore folder ("" : features under ``root``)

    def shard_root(self, shard_id: str) -> str:
        """The datastore folder of one shard of this plan (see :func:`feature_root`)."""
        return self.shard_roots()[shard_id]

    def shard_roots(self) -> dict[str, str]:
        """``{shard_id: datastore folder}`` for every task (what jobs that read features get)."""
        return {t.shard_id: feature_root(self.store, self.root, t) for t in self.tasks}

    @property
    def plan_hash(self) -> str:
        payload = json.dumps([t.model_dump() for t in self.tasks], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def corpus_tasks(self) -> list[ShardTask]:
        return [t for t in self.tasks if t.role == "corpus"]

    def target_tasks(self, name: str | None = None) -> list[ShardTask]:
        return [t for t in self.tasks if t.role == "target" and (name is None or t.target_name == name)]


def run_root(cfg: RunConfig) -> str:
    """``<output>/runs/<run_id>``; the run id is derived from the run's keys unless the config names one."""
    return storage.join(cfg.output_uri, "runs", cfg.run_id or run_keys(cfg).run_id)


def source_spec(corpus: CorpusSpec, targets: list[TargetSpec] | tuple[TargetSpec, ...],
                task: ShardTask) -> CorpusSpec:
    """How to read a task's shard: the corpus spec, or its target set read as a one-domain corpus."""
    if task.role == "corpus":
        return corpus
    target = next((t for t in targets if t.name == task.target_name), None)
    if target is None:
        raise ConfigError(f"task {task.shard_id} names unknown target {task.target_name!r}")
    return target.as_corpus()


def spec_for_task(cfg: RunConfig, task: ShardTask) -> CorpusSpec:
    return source_spec(cfg.corpus, cfg.targets, task)


def list_tasks(cfg: RunConfig) -> tuple[ShardTask, ...]:
    """Every corpus and target shard (sorted, deterministic), each with its datastore shard key."""
    tasks: list[ShardTask] = []
    for ref in discover_shards(cfg.corpus, cfg.storage):
        tasks.append(ShardTask(shard_id=ref.shard_id, uri=ref.uri, format=ref.format, role="corpus",
                               size_bytes=ref.size_bytes, version=ref.version))
    for target in cfg.targets:
        for ref in discover_shards(target.as_corpus(), cfg.storage):
            tasks.append(ShardTask(shard_id=f"target-{target.name}-{ref.shard_id}", uri=ref.uri,
                                   format=ref.format, role="target", target_name=target.name,
                                   size_bytes=ref.size_bytes, version=ref.version))
    ids = [t.shard_id for t in tasks]
    if len(set(ids)) != len(ids):
        raise ConfigError("two input shards map to the same shard id; list each shard once")
    return tuple(t.model_copy(update={"key": shard_key(t, read_settings(cfg, t.role, t.target_name))})
                 for t in tasks)


def build_plan(cfg: RunConfig) -> Plan:
    """The run's plan: every corpus and target shard, outputs under ``runs/<run_id>``, features in the
    datastore of the run's featurizer key."""
    keys = run_keys(cfg)
    return Plan(run_id=keys.run_id, root=storage.join(cfg.output_uri, "runs", keys.run_id), tasks=keys.tasks,
                store=keys.store)


@dataclass(frozen=True)
class RunKeys:
    """The keys of a run of one config (``influmix config`` prints them; workflows/run/keys.py)."""

    featurizer: str
    analysis: str
    run_id: str
    store: str
    tasks: tuple[ShardTask, ...]


def run_keys(cfg: RunConfig) -> RunKeys:
    """List the inputs and derive every key; the run id is ``cfg.run_id`` when one is given."""
    store = featurizer_store(cfg)
    tasks = list_tasks(cfg)
    key = analysis_key(cfg, store, tasks)
    return RunKeys(featurizer=store.rstrip("/").rsplit("/", 1)[-1], analysis=key,
                   run_id=cfg.run_id or f"{cfg.name}-{key[:12]}", store=store, tasks=tasks)


def plan_completions(plan: Plan, spec: storage.StorageSpec) -> dict[str, datastore.CompletionRecord]:
    """The completion records of the plan's shards that exist (by shard id)."""
    roots = plan.shard_roots()
    return datastore.read_completions({sid: roots[sid] for sid in roots}, spec)


def read_recorded_plan(root: str, spec: storage.StorageSpec) -> dict | None:
    """The plan.json recorded under a run root, or None before the run first started."""
    uri = storage.join(root, PLAN_FILE)
    return storage.read_json(uri, spec) if storage.exists(uri, spec) else None


def check_or_record_plan(plan: Plan, spec: storage.StorageSpec, pins: dict | None = None) -> bool:
    """Record the plan (with the run-time inputs pinned at start, and the start time) on first run.
    First writer wins (conditional create). Returns True when resuming.

    A rerun under a run id given in the config may find the input shards changed (a corrupt shard was
    fixed, shards were added): an unfinished run records the new plan and goes on (unchanged shards keep
    their features in the datastore; the stages after featurizing recompute); a finished run is refused.
    Derived run ids contain every shard key, so their plan cannot change."""
    uri = storage.join(plan.root, PLAN_FILE)
    doc = {"run_id": plan.run_id, "plan_hash": plan.plan_hash, "pins": pins or {}, "store": plan.store,
           "started_at": datetime.now(timezone.utc).isoformat(),
           "tasks": [t.model_dump() for t in plan.tasks]}
    if storage.put_if_absent(uri, (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode(), spec):
        return False
    recorded = storage.read_json(uri, spec)
    if pins is not None and "pins" in recorded and recorded["pins"] != pins:
        raise ConfigError(f"run {plan.run_id} was started with inputs {recorded['pins']} (recorded at "
                          f"{uri}), not {pins}; rerun to resume it with the recorded inputs")
    if recorded.get("plan_hash") != plan.plan_hash:
        if storage.exists(storage.join(plan.root, "_SUCCESS"), spec):
            raise ConfigError(
                f"the shard plan of run {plan.run_id} changed since it finished (recorded at {uri}): input "
                "shards were added, removed or changed. Its result would not match them; start a new run "
                "(drop run_id=... to derive one; the unchanged shards' features are reused).")
        before = {t.get("shard_id"): t.get("key") for t in recorded.get("tasks", [])}
        changed = sorted(t.shard_id for t in plan.tasks if before.get(t.shard_id) != t.key)
        gone = sorted(set(before) - {t.shard_id for t in plan.tasks})
        log.warning("run %s: input shards changed since it started (new or changed: %s; removed: %s); "
                    "resuming with the new plan, unchanged shards keep their features", plan.run_id,
                    changed or "none", gone or "none")
        doc["pins"], doc["started_at"] = recorded.get("pins", doc["pins"]), recorded.get("started_at")
        storage.write_json_atomic(uri, doc, spec)
    return True
