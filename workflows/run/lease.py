"""The run lease: one driver at a time featurizes and publishes a run (see operators/io/lease.py)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator

from operators.io import storage
from operators.io.lease import Lease
from workflows.config import RunConfig
from workflows.run.plan import Plan

LEASE_FILE = "_lease.json"
#: Exit code of a driver whose Ray cluster went away (docs/RELIABILITY.md lists every code).
EXIT_CLUSTER_LOST = 5
log = logging.getLogger(__name__)


@contextlib.contextmanager
def run_lease(cfg: RunConfig, plan: Plan) -> Iterator[Lease]:
    """Hold `runs/<run_id>/_lease.json` for the block; LeaseHeld (clear message) if another live driver has it
    after `cluster.lease_wait_s`. A crashed driver's lease lapses after `cluster.lease_ttl_s`."""
    lease = Lease(storage.join(plan.root, LEASE_FILE), cfg.cluster.lease_ttl_s, cfg.storage,
                  info={"run_id": plan.run_id})
    lease.acquire(cfg.cluster.lease_wait_s, poll_s=min(5.0, cfg.cluster.lease_ttl_s / 4),
                  what=f"run {plan.run_id}")
    try:
        yield lease
    finally:
        lease.release()


def cluster_lost(lease: Lease) -> Callable[[str], None]:
    """What the driver does when its Ray cluster goes away: one line naming the cause, release the run lease
    (the next driver takes over at once), exit with :data:`EXIT_CLUSTER_LOST`. Ray would otherwise end the
    process after 60 s with its own log line and leave the lease to expire."""

    def lost(reason: str) -> None:
        print(f"influmix: error: {reason}; run lease released, rerun to resume", file=sys.stderr, flush=True)
        try:
            lease.release()
        except Exception as exc:  # the lease expires on its own
            log.warning("could not release %s: %s", lease.uri, exc)
        os._exit(EXIT_CLUSTER_LOST)

    return lost
