"""A process-wide stop signal for long Ray work (lease lost, cluster gone).

Whoever learns that the driver must stop (the lease heartbeat, the cluster watchdog) calls
:func:`request_stop` from its own thread; the waiting loops of the actor pool and of the shard and probe
fan-outs call :func:`check` each time they wake, cancel what is in flight and raise :class:`StopRequested`.
"""

from __future__ import annotations

import threading

from operators.errors import InfluMixError


class StopRequested(InfluMixError):
    """The driver was told to stop (its reason is the message); in-flight Ray work was cancelled."""

    exit_code = 4


_event = threading.Event()
_reason: list[tuple[str, int]] = []


def request_stop(reason: str, exit_code: int = 4) -> None:
    """Ask every waiting loop to stop; the first reason wins."""
    if not _event.is_set():
        _reason.append((reason, exit_code))
        _event.set()


def stop_requested() -> bool:
    return _event.is_set()


def check() -> None:
    """StopRequested if a stop was requested."""
    if _event.is_set():
        reason, code = _reason[0]
        exc = StopRequested(reason)
        exc.exit_code = code
        raise exc


def reset() -> None:
    """Clear the signal (at the start of a run; tests)."""
    _event.clear()
    _reason.clear()


def wait(timeout: float) -> bool:
    """Sleep up to ``timeout`` seconds; True as soon as a stop is requested."""
    return _event.wait(timeout)
