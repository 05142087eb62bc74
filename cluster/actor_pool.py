"""A fixed pool of Ray actors (one GPU each, or CPU) draining a shard queue with retries.

Actors are created with `max_restarts`/`max_task_retries`, so a crashed actor is restarted and its
in-flight call retried by Ray; anything that still fails is re-queued by the driver up to
`shard_attempts` times, unless it failed on bad input (an influmix error other than a storage error,
:func:`operators.errors.is_transient`), which would fail the same way again. Handlers write deterministic outputs, so retries never duplicate data.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from cluster.metrics import WorkerMetrics
from cluster.parallel import local_device
from cluster.runtime import WorkerLayout
from operators.errors import InfluMixError, is_transient
from cluster import cancel
from cluster.spec import ClusterSpec
from cluster.progress import Progress

log = logging.getLogger(__name__)


class ShardTask(Protocol):
    """What the pool needs of a unit of work: a stable id (the handler gets the object itself)."""

    shard_id: str


class ShardHandler(Protocol):
    def process(self, task: Any, attempt: int, on_batch: Callable | None = None) -> Any: ...
    def describe(self) -> dict: ...


HandlerFactory = Callable[[str, str], ShardHandler]  # (worker name, device) -> handler


class ShardWorker:
    """Actor body: builds its handler once (model, projector), then processes shards."""

    def __init__(self, factory: HandlerFactory, worker: str, run_id: str) -> None:
        self.worker = worker
        self.device = local_device()
        self.metrics = WorkerMetrics(run_id, worker)
        self.handler = factory(worker, self.device)

    def describe(self) -> dict:
        return {**self.handler.describe(), "worker": self.worker, "device": self.device, "pid": os.getpid(),
                "host": socket.gethostname(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}

    def process(self, task: Any, attempt: int) -> dict:
        started = time.time()
        try:
            record = self.handler.process(task, attempt, self.metrics.batch)
        except Exception as exc:
            self.metrics.shard_failed(type(exc).__name__)
            raise
        self.metrics.shard_done(int(getattr(record, "n_examples", 0)), time.time() - started)
        return record.model_dump(mode="json") if hasattr(record, "model_dump") else record


@dataclass
class PoolResult:
    records: dict[str, dict] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    workers: list[dict] = field(default_factory=list)


class ShardPool:
    """Fixed-size actor pool; `run` drains a queue of ShardTasks."""

    def __init__(self, factory: HandlerFactory, layout: WorkerLayout, spec: ClusterSpec, run_id: str,
                 name: str = "featurize") -> None:
        self.factory = factory
        self.layout = layout
        self.spec = spec
        self.run_id = run_id
        self.name = name
        self.actors: list[Any] = []

    def _new_actor(self, index: int) -> Any:
        options: dict[str, Any] = {
            "num_gpus": self.layout.gpus_per_worker,
            "num_cpus": self.layout.cpus_per_worker,
            "max_restarts": self.spec.max_restarts,
            "max_task_retries": self.spec.max_task_retries,
        }
        forwarded = {k: v for k, v in os.environ.items() if k.startswith("INFLUMIX_")}
        if forwarded:  # driver-side INFLUMIX_* settings (cache dirs, chaos hooks) reach the workers
            options["runtime_env"] = {"env_vars": forwarded}
        cls = ray.remote(ShardWorker).options(**options)
        return cls.remote(self.factory, f"{self.name}-{index}", self.run_id)

    def start(self) -> list[dict]:
        self.actors = [self._new_actor(i) for i in range(self.layout.num_workers)]
        try:
            info = ray.get([a.describe.remote() for a in self.actors], timeout=self.spec.actor_start_timeout_s)
        except GetTimeoutError:
            self.shutdown()
            raise InfluMixError(
                f"{self.layout.num_workers} {self.name} workers (each {self.layout.gpus_per_worker} GPU, "
                f"{self.layout.cpus_per_worker} CPU) did not start within {self.spec.actor_start_timeout_s}s; "
                f"the cluster has {ray.available_resources()} available. Lower cluster.num_workers or "
                "cluster.cpus_per_worker, or add nodes.") from None
        log.info("started %d %s workers: %s", len(info), self.name,
                 [(i["worker"], i["device"], i["gpu_ids"]) for i in info])
        return info

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []

    def _healthy(self, index: int) -> None:
        """Replace an actor that died for good (restarts exhausted)."""
        try:
            ray.get(self.actors[index].describe.remote(), timeout=120)
        except (RayActorError, GetTimeoutError):
            log.warning("worker %s-%d is gone; starting a replacement", self.name, index)
            self.actors[index] = self._new_actor(index)

    def run(self, tasks: list[ShardTask], progress: Progress) -> PoolResult:
        result = PoolResult()
        queue: deque[tuple[ShardTask, int]] = deque((t, 1) for t in tasks)
        idle = deque(range(len(self.actors)))
        in_flight: dict[Any, tuple[int, ShardTask, int]] = {}
        while queue or in_flight:
            while idle and queue:
                index = idle.popleft()
                task, attempt = queue.popleft()
                ref = self.actors[index].process.remote(task, attempt)
                in_flight[ref] = (index, task, attempt)
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=min(1.0, self.spec.progress_interval_s))
            if cancel.stop_requested():
                for ref in in_flight:
                    ray.cancel(ref)
                self.shutdown()
                cancel.check()
            progress.report()
            for ref in ready:
                index, task, attempt = in_flight.pop(ref)
                try:
                    record = ray.get(ref)
                except (RayActorError, RayTaskError) as exc:
                    reason = _short_error(exc)
                    if isinstance(exc, RayActorError):
                        self._healthy(index)
                    cause = exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc
                    if not is_transient(cause):  # bad input fails the same way again: no retry
                        log.error("shard %s failed (not retried: %s)", task.shard_id, reason)
                        result.failures[task.shard_id] = reason
                        progress.shard_failed()
                    elif attempt < self.spec.shard_attempts:
                        log.warning("shard %s attempt %d failed (%s); retrying", task.shard_id, attempt, reason)
                        queue.append((task, attempt + 1))
                    else:
                        log.error("shard %s failed after %d attempts: %s", task.shard_id, attempt, reason)
                        result.failures[task.shard_id] = reason
                        progress.shard_failed()
                else:
                    result.records[task.shard_id] = record
                    progress.shard_done(int(record.get("n_examples", 0)))
                idle.append(index)
        return result


def _short_error(exc: Exception) -> str:
    if isinstance(exc, RayTaskError) and exc.cause is not None:
        cause = exc.cause
        return f"{type(cause).__name__}: {cause}"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
