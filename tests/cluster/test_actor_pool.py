"""The GPU-pinned actor pool on a real local Ray cluster (2 logical GPUs on CPU machines)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest

from cluster.actor_pool import ShardPool
from cluster.runtime import WorkerLayout, worker_layout
from cluster.progress import Progress
from cluster.spec import ClusterSpec
from operators.errors import CorpusError, StorageError


@dataclass(frozen=True)
class ShardTask:
    """Any object with a shard_id is a unit of work for the pool."""

    shard_id: str
    uri: str


class _Record:
    def __init__(self, shard_id: str, n: int) -> None:
        self.shard_id, self.n_examples = shard_id, n

    def model_dump(self, mode: str = "json") -> dict:
        return {"shard_id": self.shard_id, "n_examples": self.n_examples, "pid": os.getpid()}


class FlakyHandler:
    """Fails the first attempt of shards whose id contains 'flaky'; always fails 'poison'."""

    def __init__(self, worker: str, device: str) -> None:
        self.worker, self.device = worker, device

    def describe(self) -> dict:
        return {"fingerprint": "same"}

    def process(self, task: ShardTask, attempt: int, on_batch=None):
        if "poison" in task.shard_id:
            raise ValueError(f"corrupt shard {task.uri} (attempt {attempt})")
        if "badinput" in task.shard_id:
            raise CorpusError(f"shard {task.uri}: missing column 'text' (attempt {attempt})")
        if "storage" in task.shard_id and attempt == 1:
            raise StorageError(f"reading {task.uri} timed out")
        if "flaky" in task.shard_id and attempt == 1:
            raise RuntimeError("transient failure")
        return _Record(task.shard_id, 3)


def _tasks(*names: str) -> list[ShardTask]:
    return [ShardTask(shard_id=n, uri=f"/data/{n}.parquet") for n in names]


def test_layout_uses_one_gpu_per_actor_when_gpus_exist(ray_cluster):
    layout = worker_layout(ClusterSpec())
    assert layout == WorkerLayout(2, 1.0, 1.0)
    cpu = worker_layout(ClusterSpec(use_gpus="never", num_workers=2))
    assert cpu.gpus_per_worker == 0 and cpu.num_workers == 2
    from operators.errors import ConfigError

    with pytest.raises(ConfigError, match="exceeds"):
        worker_layout(ClusterSpec(num_workers=3))


def test_actors_are_pinned_to_distinct_gpus(ray_cluster):
    pool = ShardPool(FlakyHandler, WorkerLayout(2, 1.0, 1.0), ClusterSpec(), "test", name="pin")
    try:
        info = pool.start()
    finally:
        pool.shutdown()
    gpu_ids = [tuple(i["gpu_ids"]) for i in info]
    assert all(len(g) == 1 for g in gpu_ids)
    assert len(set(gpu_ids)) == 2, gpu_ids
    assert {i["cuda_visible_devices"] for i in info} == {g[0] for g in gpu_ids}
    assert all(i["device"] == "cpu" for i in info)  # logical GPUs: CPU fallback inside the actor


def test_queue_retries_transient_failures_and_reports_poison(ray_cluster):
    spec = ClusterSpec(shard_attempts=3, progress_interval_s=0.5)
    pool = ShardPool(FlakyHandler, WorkerLayout(2, 0.0, 1.0), spec, "test", name="queue")
    tasks = _tasks("a", "flaky-b", "c", "poison-d", "e", "badinput-f", "storage-g")
    progress = Progress("test", len(tasks), interval_s=0.5)
    try:
        pool.start()
        result = pool.run(tasks, progress)
    finally:
        pool.shutdown()
    assert set(result.records) == {"a", "flaky-b", "c", "e", "storage-g"}  # storage errors are retried
    assert set(result.failures) == {"poison-d", "badinput-f"}
    assert "corrupt shard /data/poison-d.parquet (attempt 3)" in result.failures["poison-d"]
    # a deterministic input error is reported after its first attempt, not retried
    assert result.failures["badinput-f"] == "CorpusError: shard /data/badinput-f.parquet: missing column 'text' (attempt 1)"
    assert progress.done == 5 and progress.failed == 2
    assert np.sum([r["n_examples"] for r in result.records.values()]) == 15


def test_unschedulable_pool_fails_with_a_clear_error(ray_cluster):
    from operators.errors import InfluMixError

    spec = ClusterSpec(actor_start_timeout_s=3)
    pool = ShardPool(FlakyHandler, WorkerLayout(1, 0.0, 64.0), spec, "test", name="huge")
    with pytest.raises(InfluMixError, match="did not start within 3.0s"):
        pool.start()
    assert pool.actors == []
