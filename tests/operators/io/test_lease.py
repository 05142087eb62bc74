"""Run lease on a local directory and on a real S3 API (moto): one holder, expiry, takeover, release."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from operators.io import storage as st
from operators.io.lease import Lease, LeaseHeld
from tests.fixtures.concurrency import race

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["local", "s3"])
def where(request: pytest.FixtureRequest, tmp_path):
    if request.param == "local":
        return None, str(tmp_path / "root")
    return request.getfixturevalue("s3_storage")


def test_second_holder_is_refused_with_a_clear_message(where) -> None:
    spec, root = where
    uri = st.join(root, "run", "_lease.json")
    first = Lease(uri, ttl_s=30, spec=spec, info={"run_id": "r1"})
    first.acquire()
    try:
        second = Lease(uri, ttl_s=30, spec=spec)
        with pytest.raises(LeaseHeld, match=r"run r1 is held by another driver .*pid \d+.*_lease\.json"):
            second.acquire(what="run r1")
        first.check()
        assert first.renew()
    finally:
        first.release()
    assert not st.exists(uri, spec)
    second = Lease(uri, ttl_s=30, spec=spec)
    second.acquire()
    second.release()


def test_expired_lease_is_taken_over_once(where) -> None:
    spec, root = where
    uri = st.join(root, "_lease.json")
    now = [1000.0]
    crashed = Lease(uri, ttl_s=10, spec=spec, info={"host": "other-host"}, clock=lambda: now[0])
    assert crashed.try_acquire() is None  # no heartbeat: it "crashed" right after acquiring
    now[0] += 5
    assert Lease(uri, ttl_s=10, spec=spec, clock=lambda: now[0]).try_acquire()["host"] == "other-host"
    now[0] += 6  # past expiry: contenders race, exactly one takes over
    contenders = [Lease(uri, ttl_s=10, spec=spec, clock=lambda: now[0]) for _ in range(4)]
    results = race(lambda i: contenders[i].try_acquire(), len(contenders))
    winners = [i for i, r in enumerate(results) if r is None]
    assert len(results) == 4 and len(winners) == 1
    assert json.loads(st.read_bytes(uri, spec))["owner"] == contenders[winners[0]].owner
    assert crashed.renew() is False  # the crashed holder learns it lost the lease
    with pytest.raises(Exception, match="was lost"):
        crashed.check()


def test_lease_of_a_dead_local_process_is_stale(tmp_path) -> None:
    uri = str(tmp_path / "_lease.json")
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(proc.stdout)
    Lease(uri, ttl_s=3600, info={"pid": dead_pid}).try_acquire()
    assert json.loads(st.read_bytes(uri))["pid"] == dead_pid
    fresh = Lease(uri, ttl_s=3600)
    assert fresh.try_acquire() is None  # SIGKILLed driver on this host: no need to wait for the TTL


def test_waiting_contender_gets_the_lease_after_release(where) -> None:
    spec, root = where
    uri = st.join(root, "_lease.json")
    holder = Lease(uri, ttl_s=30, spec=spec)
    holder.acquire()
    threading.Timer(0.5, holder.release).start()
    waiter = Lease(uri, ttl_s=30, spec=spec)
    t0 = time.monotonic()
    waiter.acquire(wait_s=20, poll_s=0.1)
    assert 0.3 < time.monotonic() - t0 < 15
    assert json.loads(st.read_bytes(uri, spec))["owner"] == waiter.owner
    waiter.release()


def test_heartbeat_keeps_the_lease_alive(tmp_path) -> None:
    uri = str(tmp_path / "_lease.json")
    lease = Lease(uri, ttl_s=1.2)
    lease.acquire()
    try:
        time.sleep(2.0)  # longer than the TTL: renewed every 0.4 s
        assert Lease(uri, ttl_s=1.2).try_acquire() is not None
        lease.check()
    finally:
        lease.release()


def test_lease_left_by_this_process_after_a_failed_release_is_stale(tmp_path, monkeypatch) -> None:
    uri = str(tmp_path / "_lease.json")
    live = Lease(uri, ttl_s=3600)
    live.acquire()
    assert Lease(uri, ttl_s=3600).try_acquire() is not None  # a live lease of this process is respected

    def unreachable(*args, **kwargs):
        raise st.StorageError("S3 endpoint down")

    monkeypatch.setattr(st, "delete_if_match", unreachable)
    live.release()  # the lease object stays behind (storage down), but its holder is gone
    monkeypatch.undo()
    assert st.exists(uri)
    rerun = Lease(uri, ttl_s=3600)
    assert rerun.try_acquire() is None  # the same process resumes without waiting for the TTL
    rerun.release()


def test_corrupt_lease_record_counts_as_expired(where) -> None:
    spec, root = where
    uri = st.join(root, "_lease.json")
    st.write_bytes_atomic(uri, b"\xff not json", spec)
    lease = Lease(uri, ttl_s=30, spec=spec)
    assert lease.try_acquire() is None
    lease.release()


def test_heartbeat_reports_a_takeover_within_one_renewal_interval(tmp_path) -> None:
    uri = str(tmp_path / "_lease.json")
    lease = Lease(uri, ttl_s=1.2)
    lost: list[tuple[str, float]] = []
    lease.on_lost.append(lambda reason: lost.append((reason, time.monotonic())))
    lease.acquire()
    try:
        other = json.loads(open(uri).read()) | {"owner": "another-driver", "pid": 1}
        taken_at = time.monotonic()
        st.write_bytes_atomic(uri, json.dumps(other).encode())  # another driver took the lease over
        deadline = time.monotonic() + 3
        while not lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lost and "taken over" in lost[0][0]
        assert lost[0][1] - taken_at <= 0.4 + 0.3  # one renewal interval (ttl/3) plus scheduling slack
        assert lease.lost
        with pytest.raises(Exception, match="lost"):
            lease.check()
    finally:
        lease.release()
    assert json.loads(open(uri).read())["owner"] == "another-driver"  # the new owner's record is untouched
