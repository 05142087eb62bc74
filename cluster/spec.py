"""How influmix uses Ray: where the cluster is, how many workers, retries, leases and progress."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ClusterSpec(BaseModel):
    """Ray execution: local cluster by default; GPU actors when GPUs exist, CPU actors otherwise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str | None = None  # None: start a local Ray; "auto": join the running cluster
    num_workers: int | None = Field(default=None, ge=1)  # default: #GPUs, else 2 CPU actors
    use_gpus: Literal["auto", "always", "never"] = "auto"
    cpus_per_worker: float = Field(default=1.0, gt=0)
    max_restarts: int = Field(default=3, ge=-1)
    max_task_retries: int = Field(default=2, ge=-1)
    shard_attempts: int = Field(default=3, ge=1)
    num_cpus: int | None = Field(default=None, ge=1)  # local cluster only
    num_gpus: int | None = Field(default=None, ge=0)  # local cluster only (logical GPUs for tests)
    include_dashboard: bool = False
    dashboard_port: int | None = None
    metrics_export_port: int | None = None
    progress_interval_s: float = Field(default=5.0, gt=0)
    actor_start_timeout_s: float = Field(default=600.0, gt=0)
    dashboard_host: str = "127.0.0.1"  # local cluster only; expose deliberately (see README, security)
    lease_ttl_s: float = Field(default=120.0, ge=1)  # a crashed driver's run lease lapses after this
    lease_wait_s: float = Field(default=0.0, ge=0)  # wait this long for another driver's lease, then exit
