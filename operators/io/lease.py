"""A lease object with expiry: at most one live holder per key (local path or s3://).

Acquire is a conditional create (``If-None-Match: *``); a holder renews it (``If-Match`` on the version
it wrote) every ``ttl_s / 3`` from a heartbeat thread. A lease whose ``expires_at`` has passed, or whose
holder is a dead process on this host, is taken over with ``If-Match`` on the stale version, so exactly
one contender wins. Expiry compares wall clocks: drivers on different hosts need synchronised clocks
(NTP) and a TTL well above their skew.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from operators.io import storage
from operators.errors import InfluMixError

log = logging.getLogger(__name__)
_LIVE_OWNERS: set[str] = set()  # leases held by Lease objects of this process


class LeaseHeld(InfluMixError):
    """Another live driver holds the lease."""

    exit_code = 3


class LeaseLost(InfluMixError):
    """This driver's lease expired or was taken over while it worked."""

    exit_code = 4


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()


def _parse(data: bytes) -> dict:
    """A lease record; an unreadable one counts as expired (empty record)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _expires(holder: dict) -> float:
    try:
        return float(holder.get("expires_at", 0))
    except (TypeError, ValueError):
        return 0.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    """One lease on ``uri``; use :meth:`acquire` / :meth:`release` or ``with lease.held(wait_s):``."""

    def __init__(self, uri: str, ttl_s: float, spec: storage.StorageSpec | None = None,
                 info: dict[str, Any] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.uri, self.ttl_s, self.spec, self.clock = uri, float(ttl_s), spec, clock
        self.owner = uuid.uuid4().hex
        self.info = {"host": socket.gethostname(), "pid": os.getpid(), **(info or {})}
        self.version: str | None = None
        self.lost = False
        self.on_lost: list[Callable[[str], None]] = []  # called once, from the heartbeat thread
        self._renewed_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> bytes:
        now = self.clock()
        doc = {**self.info, "owner": self.owner, "renewed_at": _iso(now), "expires_at": now + self.ttl_s,
               "expires_at_iso": _iso(now + self.ttl_s), "ttl_s": self.ttl_s}
        return json.dumps(doc, sort_keys=True).encode()

    def _stale(self, holder: dict) -> bool:
        """Expired, or held on this host by a dead process, or by this process without a live Lease."""
        if _expires(holder) < self.clock():
            return True
        pid = holder.get("pid")
        if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
            return False
        if pid == os.getpid():
            return holder.get("owner") not in _LIVE_OWNERS
        return not _pid_alive(pid)

    def _confirm(self) -> bool:
        found = storage.read_versioned(self.uri, self.spec)
        if found is None or _parse(found[0]).get("owner") != self.owner:
            return False
        self.version = found[1]
        self._renewed_at = self.clock()
        _LIVE_OWNERS.add(self.owner)
        return True

    def try_acquire(self) -> dict | None:
        """Take the lease if it is free or stale. Returns None on success, else the live holder's record."""
        # Live from the first write attempt: a contender in this process that reads our record between
        # our write and our confirmation must not take it for an abandoned lease of this process.
        _LIVE_OWNERS.add(self.owner)
        holder = self._try_acquire()
        if holder is not None:
            _LIVE_OWNERS.discard(self.owner)
        return holder

    def _try_acquire(self) -> dict | None:
        for _ in range(5):
            if storage.put_if_absent(self.uri, self._record(), self.spec) and self._confirm():
                return None
            found = storage.read_versioned(self.uri, self.spec)
            if found is None:
                continue  # released meanwhile
            holder = _parse(found[0])
            if holder.get("owner") == self.owner:
                self.version = found[1]
                return None
            if not self._stale(holder):
                return holder
            log.warning("taking over stale lease %s from %s", self.uri, holder)
            if storage.put_if_match(self.uri, self._record(), found[1], self.spec) and self._confirm():
                return None
        found = storage.read_versioned(self.uri, self.spec)
        return _parse(found[0]) if found else {}

    def acquire(self, wait_s: float = 0.0, poll_s: float = 1.0, what: str = "this lease") -> None:
        """Acquire, waiting up to ``wait_s`` for a live holder to release; LeaseHeld otherwise."""
        deadline = time.monotonic() + wait_s
        while True:
            holder = self.try_acquire()
            if holder is None:
                self._start_heartbeat()
                return
            if time.monotonic() >= deadline:
                left = _expires(holder) - self.clock()
                raise LeaseHeld(
                    f"{what} is held by another driver (host {holder.get('host')}, pid {holder.get('pid')}, "
                    f"lease {self.uri}, renewed {holder.get('renewed_at')}, expires in {max(left, 0):.0f}s "
                    "unless renewed). Wait for it to finish, or raise cluster.lease_wait_s to wait here")
            log.info("%s is held by %s (pid %s); waiting", what, holder.get("host"), holder.get("pid"))
            time.sleep(min(poll_s, max(0.05, deadline - time.monotonic())))

    def renew(self) -> bool:
        if self.version is None:
            return False
        ok = storage.put_if_match(self.uri, self._record(), self.version, self.spec) and self._confirm()
        if not ok:
            self.lost = True
        return ok

    def check(self) -> None:
        """LeaseLost if the heartbeat found the lease taken over (or never held it)."""
        if self.lost or self.version is None:
            raise LeaseLost(f"lease {self.uri} was lost (expired or taken over by another driver); "
                            "stopping before writing results")

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.ttl_s / 3):
                try:
                    if not self.renew():
                        self._lose(f"lease {self.uri} was taken over by another driver")
                        return
                except storage.StorageError as exc:  # transient: keep trying until it expires
                    log.warning("renewing lease %s failed: %s", self.uri, exc)
                    if self.clock() - self._renewed_at > self.ttl_s:
                        self._lose(f"lease {self.uri} expired: it could not be renewed for {self.ttl_s:g} s "
                                   f"({exc})")
                        return

        self._stop.clear()
        self._thread = threading.Thread(target=beat, name="influmix-lease", daemon=True)
        self._thread.start()

    def _lose(self, reason: str) -> None:
        self.lost = True
        log.error("%s; stopping this driver's work on it", reason)
        for callback in list(self.on_lost):
            try:
                callback(reason)
            except Exception:  # a callback must not kill the heartbeat thread silently
                log.exception("lease-lost callback failed")

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours."""
        _LIVE_OWNERS.discard(self.owner)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.version is not None and not self.lost:
            try:
                storage.delete_if_match(self.uri, self.version, self.spec)
            except storage.StorageError as exc:  # it expires on its own
                log.warning("releasing lease %s failed: %s", self.uri, exc)
        self.version = None
