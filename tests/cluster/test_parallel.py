"""Probe fan-out over Ray tasks: order preserved, one task per worker slot, GPU pinning."""

from __future__ import annotations

import os
import time

from cluster.parallel import chunked, parallel_map
from cluster.runtime import WorkerLayout


def test_chunked_is_contiguous_and_balanced():
    assert chunked(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert chunked([1, 2], 5) == [[1], [2]]
    assert chunked([], 3) == []


class _Square:
    def __call__(self, chunk, device):
        time.sleep(1.0)  # keep both tasks alive at once, so each holds its own GPU slot
        return [(x * x, os.getpid(), device, os.environ.get("CUDA_VISIBLE_DEVICES")) for x in chunk]


def test_parallel_map_keeps_order_and_uses_each_slot(ray_cluster):
    out = parallel_map(_Square(), list(range(10)), WorkerLayout(2, 1.0, 1.0))
    assert [o[0] for o in out] == [x * x for x in range(10)]
    assert {o[2] for o in out} == {"cpu"}  # logical GPUs on a CPU machine: CPU fallback
    assert len({o[3] for o in out}) == 2  # the two chunks ran on two different (logical) GPUs
