"""Run-level integrity checks over featurized shards.

Duplicate-id policy: an example id must be unique within a shard (checked when the shard is read) and
across the corpus shards of a run, and within each target set (checked here, after featurization, on
the feature shards). Either case is an error naming the id and both shards; nothing is dropped silently.
Sampling is a function of the id, so both copies of a duplicated id are sampled or neither: a
duplicate that sampling drops cannot change the result and is not reported. A group whose exact set
of datastore shards passed once is remembered in the datastore (``<store>/_unique_ids/``) and not read
again by later runs.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq

from operators.features import datastore

from operators.io import storage
from operators.io.corpus import example_hash
from operators.errors import CorpusError
from workflows.config import RunConfig
from workflows.run.plan import Plan, ShardTask, plan_completions


def _ids(root: str, shard_id: str, spec: storage.StorageSpec) -> list[str]:
    """The ids of one shard's features (each part checked against its completion record)."""
    out: list[str] = []
    record = datastore.read_completion(root, shard_id, spec)
    for uri in datastore.shard_part_uris(root, shard_id, spec):
        data = datastore.verified_part_bytes(uri, record, spec)
        try:
            out.extend(pq.read_table(io.BytesIO(data), columns=["id"]).column("id").to_pylist())
        except (OSError, ValueError) as exc:
            raise CorpusError(f"feature shard {uri}: unreadable id column: {exc}") from exc
    return out


BUCKETS = 16  # reduce tasks per group: each holds ~1/BUCKETS of the group's id hashes


def _hash_uri(root: str, group: str, shard_id: str) -> str:
    return storage.join(root, "_integrity", group, f"{shard_id}.npz")


class _HashShard:
    """Map: a shard's ids → 64-bit hashes, split into sorted buckets (one npz under the run root)."""

    def __init__(self, root: str, spec: storage.StorageSpec, shard_roots: dict[str, str] | None = None) -> None:
        self.root, self.spec, self.shard_roots = root, spec, shard_roots or {}

    def __call__(self, item: tuple[str, str]) -> int:
        group, shard_id = item
        hashes = example_hash(_ids(self.shard_roots.get(shard_id, self.root), shard_id, self.spec), 0)
        buckets = {f"b{b}": np.sort(hashes[hashes % BUCKETS == b]) for b in range(BUCKETS)}
        datastore.write_npz_atomic(_hash_uri(self.root, group, shard_id), buckets, self.spec)
        return int(hashes.size)


class _FindDuplicates:
    """Reduce: one bucket of one group across all its shards → hash collisions as (hash, shard, shard)."""

    def __init__(self, root: str, spec: storage.StorageSpec) -> None:
        self.root, self.spec = root, spec

    def __call__(self, item: tuple[str, int, list[str]]) -> list[tuple[int, str, str]]:
        group, b, shard_ids = item
        arrays = [datastore.read_npz(_hash_uri(self.root, group, s), self.spec)[f"b{b}"] for s in shard_ids]
        hashes = np.concatenate(arrays) if arrays else np.zeros(0, np.uint64)
        owner = np.concatenate([np.full(a.size, i) for i, a in enumerate(arrays)]) if arrays else np.zeros(0, int)
        order = np.argsort(hashes, kind="stable")
        hashes, owner = hashes[order], owner[order]
        same = np.flatnonzero(hashes[1:] == hashes[:-1])
        return [(int(hashes[i]), shard_ids[owner[i]], shard_ids[owner[i + 1]]) for i in same[:10]]


def check_unique_ids(cfg: RunConfig, plan: Plan, layout=None) -> int:
    """CorpusError on an id featurized twice within the corpus or within one target set. Returns #ids.

    Map-reduce (``cluster.parallel.map_shards``): each shard writes its id hashes in ``BUCKETS``
    sorted buckets; one task per (group, bucket) looks for equal hashes; a hash match is confirmed on
    the ids themselves. The driver holds only shard lists and the few matches, whatever the corpus size.
    """
    from cluster.parallel import map_shards
    from cluster.runtime import layout_or_local

    layout = layout or layout_or_local(cfg.cluster)
    groups: dict[str, list[ShardTask]] = {"corpus": plan.corpus_tasks()}
    for target in cfg.targets:
        groups[f"target-{target.name}"] = plan.target_tasks(target.name)
    total = 0
    checked = {g: _checked_uri(plan, tasks) for g, tasks in groups.items()}
    for group, uri in checked.items():  # groups whose exact shard set was checked before (datastore)
        if uri is not None and storage.exists(uri, cfg.storage):
            total += int(storage.read_json(uri, cfg.storage)["ids"])
            del groups[group]
    items = [(g, t.shard_id) for g, tasks in groups.items() for t in tasks]
    counts: dict[str, int] = {}
    for (group, _), n in zip(items, map_shards(_HashShard(plan.root, cfg.storage, plan.shard_roots()), items,
                                               layout)):
        counts[group] = counts.get(group, 0) + n
    reduce_items = [(g, b, [t.shard_id for t in tasks]) for g, tasks in groups.items() if tasks
                    for b in range(BUCKETS)]
    by_id = {t.shard_id: t for t in plan.tasks}
    for (group, _, _), matches in zip(reduce_items, map_shards(_FindDuplicates(plan.root, cfg.storage),
                                                                reduce_items, layout)):
        for value, first, second in matches:
            dup = _confirm(plan.shard_roots(), cfg.storage, value, first, second)
            if dup is not None:
                name = "corpus" if group == "corpus" else f"target {group[len('target-'):]}"
                raise CorpusError(
                    f"duplicate example id {dup!r} in the {name}: shards {by_id[first].uri} and "
                    f"{by_id[second].uri} (ids must be unique across shards; deduplicate the inputs)")
    for group in groups:
        if checked[group] is not None:
            storage.write_json_atomic(checked[group], {"group": group, "ids": counts.get(group, 0)}, cfg.storage)
        total += counts.get(group, 0)
    return total


def _checked_uri(plan: Plan, tasks: list[ShardTask]) -> str | None:
    """Where the datastore remembers that this exact set of shards has unique ids (None: no datastore)."""
    if not plan.store or any(t.key is None for t in tasks):
        return None
    from workflows.run.keys import digest

    return storage.join(plan.store, "_unique_ids", f"{digest(sorted(t.key for t in tasks))}.json")


def _confirm(roots: dict[str, str], spec: storage.StorageSpec, value: int, first: str, second: str) -> str | None:
    """The id behind a hash match, or None when two different ids merely share a 64-bit hash."""
    def with_hash(shard_id: str) -> set[str]:
        ids = _ids(roots[shard_id], shard_id, spec)
        return {i for i, h in zip(ids, example_hash(ids, 0).tolist()) if h == value}

    common = with_hash(first) & with_hash(second) if first != second else with_hash(first)
    return min(common) if common and (first != second or len(common) == 1) else None


def skipped_examples(cfg: RunConfig, plan: Plan) -> dict[str, int]:
    """Examples skipped by documented policy, summed over the run's completion records (for report.json)."""
    records = plan_completions(plan, cfg.storage)
    return {"nonfinite_features": sum(r.skipped_nonfinite for r in records.values())}
