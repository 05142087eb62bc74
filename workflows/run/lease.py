"""The run lease: one driver at a time featurizes and publishes a run (see operators/io/lease.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from operators.io import storage
from operators.io.lease import Lease
from workflows.config import RunConfig
from workflows.run.plan import Plan

LEASE_FILE = "_lease.json"


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
