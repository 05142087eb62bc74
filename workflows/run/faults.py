"""Driver-side chaos hook for fault-matrix tests and drills (docs/RELIABILITY.md).

`INFLUMIX_DRIVER_FAULT=kill:<point>` SIGKILLs the driver process when it reaches `<point>` (e.g.
`publish`: after the manifest files, before `_SUCCESS` and the `latest` pointer). Unset: no effect.
"""

from __future__ import annotations

import logging
import os
import signal

DRIVER_FAULT_ENV = "INFLUMIX_DRIVER_FAULT"
log = logging.getLogger(__name__)


def maybe_inject_fault(point: str) -> None:
    spec = os.environ.get(DRIVER_FAULT_ENV, "")
    if spec == f"kill:{point}":
        log.warning("fault injection: SIGKILL driver pid %s at %s", os.getpid(), point)
        os.kill(os.getpid(), signal.SIGKILL)
