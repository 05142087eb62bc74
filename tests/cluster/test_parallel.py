"""Probe fan-out over Ray tasks: order preserved, one task per worker slot, GPU pinning."""

from __future__ import annotations

import os
import time

import pytest

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


class _Tracked:
    """Records (start, end, pid) per item so the test can count overlapping tasks."""

    def __call__(self, item):
        start = time.time()
        time.sleep(0.3 if item % 3 else 0.6)  # uneven: later items finish first
        return item * 10, start, time.time(), os.getpid()


def test_map_shards_yields_in_order_with_bounded_concurrency(ray_cluster):
    from cluster.parallel import map_shards

    out = list(map_shards(_Tracked(), list(range(8)), WorkerLayout(2, 1.0, 1.0)))
    assert [o[0] for o in out] == [x * 10 for x in range(8)]
    spans = [(o[1], o[2]) for o in out]
    most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert most == 2  # two workers ran at once, never more
    assert list(map_shards(_Tracked(), [4, 5], WorkerLayout(1, 0.0, 1.0)))[1][0] == 50


def test_map_shards_raises_the_original_error(ray_cluster):
    from cluster.parallel import map_shards
    from operators.errors import CorpusError

    with pytest.raises(CorpusError, match="bad shard 2"):
        list(map_shards(_Fails(), [1, 2, 3], WorkerLayout(2, 0.0, 1.0)))


class _Fails:
    def __call__(self, item):
        from operators.errors import CorpusError

        if item == 2:
            raise CorpusError(f"bad shard {item}")
        return item
