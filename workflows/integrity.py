"""Run-level integrity checks over featurized shards.

Duplicate-id policy: an example id must be unique within a shard (checked when the shard is read) and
across the corpus shards of a run, and within each target set (checked here, after featurization, on
the feature shards). Either case is an error naming the id and both shards; nothing is dropped silently.
Sampling is a function of the id, so both copies of a duplicated id are sampled or neither: a
duplicate that sampling drops cannot change the result and is not reported.
"""

from __future__ import annotations

import io

import pyarrow.parquet as pq

from operators import datastore, storage
from operators.errors import CorpusError
from workflows.config import RunConfig
from workflows.plan import Plan, ShardTask


def _ids(root: str, shard_id: str, spec: storage.StorageSpec) -> list[str]:
    out: list[str] = []
    for uri in datastore.shard_part_uris(root, shard_id, spec):
        try:
            out.extend(pq.read_table(io.BytesIO(storage.read_bytes(uri, spec)), columns=["id"]).column("id").to_pylist())
        except (OSError, ValueError) as exc:
            raise CorpusError(f"feature shard {uri}: unreadable id column: {exc}") from exc
    return out


def check_unique_ids(cfg: RunConfig, plan: Plan) -> int:
    """CorpusError on an id featurized twice within the corpus or within one target set. Returns #ids."""
    groups: dict[str, list[ShardTask]] = {"corpus": plan.corpus_tasks()}
    for target in cfg.targets:
        groups[f"target {target.name}"] = plan.target_tasks(target.name)
    total = 0
    for group, tasks in groups.items():
        seen: dict[str, str] = {}
        for task in tasks:
            for example_id in _ids(plan.root, task.shard_id, cfg.storage):
                first = seen.setdefault(example_id, task.uri)
                if first != task.uri:
                    raise CorpusError(
                        f"duplicate example id {example_id!r} in the {group}: shards {first} and {task.uri} "
                        "(ids must be unique across shards; deduplicate the inputs)")
        total += len(seen)
    return total


def skipped_examples(cfg: RunConfig, plan: Plan) -> dict[str, int]:
    """Examples skipped by documented policy, summed over the run's completion records (for report.json)."""
    records = datastore.list_completions(plan.root, cfg.storage)
    return {"nonfinite_features": sum(r.skipped_nonfinite for r in records.values())}
