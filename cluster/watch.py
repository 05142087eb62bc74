"""Notice when the Ray cluster behind this driver goes away, and stop cleanly instead of hanging.

Ray's own driver waits 60 s for a lost GCS and then terminates the process with a C++ log line, skipping
every ``finally``. :class:`ClusterWatch` probes the GCS port every ``interval_s``; after ``failures``
consecutive refused connections it calls ``on_lost(reason)`` from its thread (the driver prints one line,
releases its lease and exits with its own code).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def _reachable(host: str, port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class ClusterWatch:
    """A daemon thread that calls ``on_lost`` once when the GCS at ``address`` stops answering."""

    def __init__(self, address: str, on_lost: Callable[[str], None], interval_s: float = 2.0,
                 failures: int = 3) -> None:
        self.address = address
        self.host, self.port = split_address(address)
        self.on_lost, self.interval_s, self.failures = on_lost, interval_s, failures
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="influmix-cluster-watch", daemon=True)

    def start(self) -> ClusterWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.interval_s * 2 + 1)

    def _loop(self) -> None:
        missed = 0
        while not self._stop.wait(self.interval_s):
            if _reachable(self.host, self.port, timeout_s=min(2.0, self.interval_s)):
                missed = 0
                continue
            missed += 1
            if missed >= self.failures and not self._stop.is_set():
                reason = (f"the Ray cluster went away: its GCS at {self.address} refused connections for "
                          f"{missed * self.interval_s:.0f} s (stopped with `ray stop`, or its head node died)")
                log.debug("cluster watch: %s", reason)
                self.on_lost(reason)
                return
