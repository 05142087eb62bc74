"""Shard plan of a run: which corpus and target shards to featurize, and where outputs go."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from operators.errors import ConfigError
from operators.io import storage
from operators.io.corpus import CorpusSpec, TargetSpec, discover_shards

if TYPE_CHECKING:
    from workflows.config import RunConfig

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


@dataclass(frozen=True)
class Plan:
    run_id: str
    root: str
    tasks: tuple[ShardTask, ...]

    @property
    def plan_hash(self) -> str:
        payload = json.dumps([t.model_dump() for t in self.tasks], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def corpus_tasks(self) -> list[ShardTask]:
        return [t for t in self.tasks if t.role == "corpus"]

    def target_tasks(self, name: str | None = None) -> list[ShardTask]:
        return [t for t in self.tasks if t.role == "target" and (name is None or t.target_name == name)]


def run_root(cfg: RunConfig) -> str:
    return storage.join(cfg.output_uri, "runs", cfg.resolved_run_id())


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


def list_tasks(corpus: CorpusSpec, targets: list[TargetSpec], spec: storage.StorageSpec) -> tuple[ShardTask, ...]:
    """Every corpus and target shard (sorted, deterministic)."""
    tasks: list[ShardTask] = []
    for ref in discover_shards(corpus, spec):
        tasks.append(ShardTask(shard_id=ref.shard_id, uri=ref.uri, format=ref.format, role="corpus",
                               size_bytes=ref.size_bytes))
    for target in targets:
        for ref in discover_shards(target.as_corpus(), spec):
            tasks.append(ShardTask(shard_id=f"target-{target.name}-{ref.shard_id}", uri=ref.uri,
                                   format=ref.format, role="target", target_name=target.name,
                                   size_bytes=ref.size_bytes))
    ids = [t.shard_id for t in tasks]
    if len(set(ids)) != len(ids):
        raise ConfigError("two input shards map to the same shard id; list each shard once")
    return tuple(tasks)


def build_plan(cfg: RunConfig) -> Plan:
    """The run's plan: every corpus and target shard, under ``runs/<run_id>``."""
    return Plan(run_id=cfg.resolved_run_id(), root=run_root(cfg),
                tasks=list_tasks(cfg.corpus, cfg.targets, cfg.storage))


def read_recorded_plan(root: str, spec: storage.StorageSpec) -> dict | None:
    """The plan.json recorded under a run root, or None before the run first started."""
    uri = storage.join(root, PLAN_FILE)
    return storage.read_json(uri, spec) if storage.exists(uri, spec) else None


def check_or_record_plan(plan: Plan, spec: storage.StorageSpec, pins: dict | None = None) -> bool:
    """Record the plan (with the run-time inputs pinned at start, and the start time) on first run; on a
    rerun refuse a changed plan. First writer wins (conditional create). Returns True when resuming."""
    uri = storage.join(plan.root, PLAN_FILE)
    doc = {"run_id": plan.run_id, "plan_hash": plan.plan_hash, "pins": pins or {},
           "started_at": datetime.now(timezone.utc).isoformat(),
           "tasks": [t.model_dump() for t in plan.tasks]}
    if storage.put_if_absent(uri, (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode(), spec):
        return False
    recorded = storage.read_json(uri, spec)
    if recorded.get("plan_hash") != plan.plan_hash:
        raise ConfigError(
            f"the shard plan of run {plan.run_id} changed since it was recorded at {uri} "
            "(input shards were added, removed or resized). Completed shards would no longer match; "
            "start a new run (set run_id=...) or restore the inputs."
        )
    if pins is not None and "pins" in recorded and recorded["pins"] != pins:
        raise ConfigError(f"run {plan.run_id} was started with inputs {recorded['pins']} (recorded at "
                          f"{uri}), not {pins}; rerun to resume it with the recorded inputs")
    return True
