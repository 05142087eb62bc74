"""Fan independent work out over Ray tasks.

* :func:`parallel_map`: probe work (TiKMiX-M mixture probes, MATES oracle probes); each task gets one
  worker's resources (a GPU when the cluster has them), loads the model once and handles a contiguous
  chunk.
* :func:`map_shards`: one CPU task per item (a shard), at most ``num_workers`` running, results yielded
  in input order with a bounded look-ahead, so a driver can fold them in a fixed order while holding
  only a few results at once.

Results come back in input order either way, so output is independent of how many workers ran.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import ray

from cluster import cancel
from cluster.runtime import WorkerLayout

T = TypeVar("T")
R = TypeVar("R")


def local_device() -> str:
    """CUDA when Ray gave this process a GPU that torch can see, else CPU (threads = assigned CPUs)."""
    import torch

    if ray.is_initialized() and ray.get_gpu_ids() and torch.cuda.is_available():
        return "cuda"
    if ray.is_initialized():
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        if cpus:
            torch.set_num_threads(max(1, int(cpus)))
    return "cpu"


def _run_chunk(fn: Callable[[list[Any], str], list[Any]], chunk: list[Any]) -> list[Any]:
    return fn(chunk, local_device())


def chunked(items: Sequence[T], parts: int) -> list[list[T]]:
    """Split into at most `parts` contiguous, nearly equal, non-empty chunks."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + size + (1 if i < extra else 0)
        out.append(list(items[start:stop]))
        start = stop
    return [c for c in out if c]


def parallel_map(fn: Callable[[list[T], str], list[R]], items: Sequence[T], layout: WorkerLayout,
                 retries: int = 2) -> list[R]:
    """fn(chunk, device) -> results for the chunk, run as one Ray task per worker slot."""
    if not items:
        return []
    if not ray.is_initialized():
        return fn(list(items), local_device())
    task = ray.remote(_run_chunk).options(num_gpus=layout.gpus_per_worker, num_cpus=layout.cpus_per_worker,
                                          max_retries=retries)
    refs = [task.remote(fn, chunk) for chunk in chunked(items, layout.num_workers)]
    pending = list(refs)
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
        _stop_if_requested(pending)
    return [r for part in ray.get(refs) for r in part]


def _stop_if_requested(running) -> None:
    """Cancel the running tasks and raise StopRequested when the driver was told to stop."""
    if cancel.stop_requested():
        for ref in running:
            ray.cancel(ref, force=True)
        cancel.check()


def _run_one(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


def map_shards(fn: Callable[[T], R], items: Sequence[T], layout: WorkerLayout, retries: int = 2,
               lookahead: int | None = None) -> Iterator[R]:
    """Yield ``fn(item)`` for each item in input order; one Ray task (CPU only) per item.

    At most ``layout.num_workers`` tasks run at once and at most ``lookahead`` (default 2 × workers)
    results are submitted but not yet yielded, which bounds the caller's memory. Ray retries a task
    whose worker died (``retries``); an exception raised by ``fn`` propagates (Ray's error is also an
    instance of the original exception class). Without Ray, runs in-process.
    """
    if not ray.is_initialized():
        for item in items:
            yield fn(item)
        return
    workers = max(1, layout.num_workers)
    lookahead = max(workers, lookahead or 2 * workers)
    task = ray.remote(_run_one).options(num_cpus=layout.cpus_per_worker, num_gpus=0, max_retries=retries)
    fn_ref = ray.put(fn)
    running: dict[Any, int] = {}
    finished: dict[int, Any] = {}
    submitted = emitted = 0
    try:
        while emitted < len(items):
            while submitted < len(items) and len(running) < workers and submitted - emitted < lookahead:
                running[task.remote(fn_ref, items[submitted])] = submitted
                submitted += 1
            if emitted in finished:
                yield ray.get(finished.pop(emitted))
                emitted += 1
                continue
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            _stop_if_requested(running)
            for ref in ready:
                finished[running.pop(ref)] = ref
    finally:
        for ref in running:
            ray.cancel(ref)
