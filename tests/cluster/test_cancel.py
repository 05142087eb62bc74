"""The stop signal: fan-outs on a real Ray cluster stop promptly and cancel their tasks when asked."""

from __future__ import annotations

import threading
import time

import pytest

from cluster import cancel
from cluster.parallel import map_shards, parallel_map
from cluster.runtime import WorkerLayout


def _sleepy(x: int) -> int:
    time.sleep(30)
    return x


def _sleepy_chunk(chunk: list[int], device: str) -> list[int]:
    time.sleep(30)
    return chunk


@pytest.fixture(autouse=True)
def _clean_signal():
    cancel.reset()
    yield
    cancel.reset()


@pytest.mark.slow
@pytest.mark.parametrize("fan_out", ["map_shards", "parallel_map"])
def test_a_stop_request_ends_a_fan_out_within_seconds(ray_cluster, fan_out) -> None:
    layout = WorkerLayout(2, 0.0, 1.0)
    threading.Timer(2.0, cancel.request_stop, args=("lease lost: taken over",)).start()
    t0 = time.monotonic()
    with pytest.raises(cancel.StopRequested, match="taken over") as info:
        if fan_out == "map_shards":
            list(map_shards(_sleepy, list(range(4)), layout))
        else:
            parallel_map(_sleepy_chunk, list(range(4)), layout)
    assert time.monotonic() - t0 < 10  # not the 30 s the tasks would take
    assert info.value.exit_code == 4


def test_first_reason_wins_and_reset_clears() -> None:
    cancel.request_stop("first", exit_code=5)
    cancel.request_stop("second")
    with pytest.raises(cancel.StopRequested, match="first") as info:
        cancel.check()
    assert info.value.exit_code == 5
    cancel.reset()
    cancel.check()  # no stop requested: returns
