"""Fan independent probe work (TiKMiX-M mixture probes, MATES oracle probes) out over Ray tasks.

Each task gets one worker's resources (a GPU when the cluster has them), loads the model once and
handles a contiguous chunk; results come back in input order, so output is independent of how many
workers ran.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import ray

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
    return [r for part in ray.get(refs) for r in part]
