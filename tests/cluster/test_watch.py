"""The cluster watchdog: notices when the GCS port stops answering, calls back once, never before."""

from __future__ import annotations

import socket
import threading
import time

from cluster.watch import ClusterWatch, split_address


def _server() -> socket.socket:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:  # closed by the test
                return
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    return srv


def test_lost_cluster_is_reported_once_after_consecutive_failures() -> None:
    srv = _server()
    address = f"127.0.0.1:{srv.getsockname()[1]}"
    calls: list[tuple[str, float]] = []
    watch = ClusterWatch(address, on_lost=lambda r: calls.append((r, time.monotonic())), interval_s=0.1,
                         failures=3).start()
    try:
        time.sleep(0.6)
        assert calls == []  # reachable: nothing reported
        closed = time.monotonic()
        srv.close()
        deadline = time.monotonic() + 3
        while not calls and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)
        assert len(calls) == 1
        assert address in calls[0][0] and "went away" in calls[0][0]
        assert 0.2 <= calls[0][1] - closed <= 1.5
    finally:
        watch.stop()


def test_stopped_watch_reports_nothing() -> None:
    srv = _server()
    calls: list[str] = []
    watch = ClusterWatch(f"127.0.0.1:{srv.getsockname()[1]}", on_lost=calls.append, interval_s=0.05).start()
    watch.stop()
    srv.close()
    time.sleep(0.4)
    assert calls == []


def test_split_address_handles_ipv6() -> None:
    assert split_address("[::1]:6379") == ("::1", 6379)
    assert split_address("10.0.0.1:6380") == ("10.0.0.1", 6380)
