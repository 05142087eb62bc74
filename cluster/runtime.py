"""Start or join a Ray cluster and decide how many (GPU or CPU) workers to run."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass

import ray

from operators.errors import ConfigError
from cluster.spec import ClusterSpec

log = logging.getLogger(__name__)
#: Where private local clusters keep their session files (short: Ray's socket paths must stay < 108 bytes).
PRIVATE_TEMP_ROOT = "/tmp"
_PRIVATE_DIRS: list[str] = []


@dataclass(frozen=True)
class WorkerLayout:
    num_workers: int
    gpus_per_worker: float
    cpus_per_worker: float


def init_ray(spec: ClusterSpec, runtime_env: dict | None = None) -> bool:
    """Connect to Ray. Returns True when this call started a local cluster (caller shuts it down).

    ``cluster.address`` null starts a private local cluster (never one that `ray start` left running on
    the host). ``auto`` or an address joins that cluster; so does a Ray Job (RAY_ADDRESS set) or a process
    where Ray is already initialised.
    """
    if ray.is_initialized():
        return False
    address = spec.address or os.environ.get("RAY_ADDRESS")
    # Ray's own start-up warnings only with `influmix ... -v` (INFLUMIX_VERBOSE); workers' logs always reach
    # the driver (our warnings from workers matter)
    level = logging.WARNING if os.environ.get("INFLUMIX_VERBOSE") else logging.ERROR
    kwargs: dict = {"log_to_driver": True, "logging_level": level}
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    if address:
        ray.init(address=address, **kwargs)
        return False
    # "local" starts a cluster of our own even when another `ray start` cluster runs on this host (a plain
    # ray.init() would join that one), with its own temp dir so no session files are shared.
    temp_dir = tempfile.mkdtemp(prefix=f"influmix-ray-{os.getpid()}-", dir=PRIVATE_TEMP_ROOT)
    _PRIVATE_DIRS.append(temp_dir)
    ray.init(
        address="local",
        _temp_dir=temp_dir,
        num_cpus=spec.num_cpus,
        num_gpus=spec.num_gpus,
        include_dashboard=spec.include_dashboard,
        dashboard_host=spec.dashboard_host,  # 127.0.0.1 by default: not reachable from other hosts
        dashboard_port=spec.dashboard_port,
        _metrics_export_port=spec.metrics_export_port,
        **kwargs,
    )
    return True


def worker_layout(spec: ClusterSpec) -> WorkerLayout:
    """One actor per GPU (num_gpus=1 each) when GPUs exist, else CPU actors."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    use_gpus = spec.use_gpus == "always" or (spec.use_gpus == "auto" and gpus > 0)
    if spec.use_gpus == "always" and gpus == 0:
        raise ConfigError("cluster.use_gpus=always but the Ray cluster reports no GPUs")
    if use_gpus:
        n = spec.num_workers or gpus
        if n > gpus:
            raise ConfigError(f"cluster.num_workers={n} exceeds the {gpus} GPUs of the cluster")
        return WorkerLayout(n, 1.0, spec.cpus_per_worker)
    n = spec.num_workers or max(1, min(2, int(cpus)))
    cpus_per = min(spec.cpus_per_worker, cpus / n)
    return WorkerLayout(n, 0.0, cpus_per)


def layout_or_local(spec: ClusterSpec) -> WorkerLayout:
    """:func:`worker_layout` when Ray is running, else one in-process CPU worker."""
    if not ray.is_initialized():
        return WorkerLayout(1, 0.0, 1.0)
    return worker_layout(spec)


def gcs_address() -> str | None:
    """host:port of the GCS this driver is connected to (None when Ray is not running)."""
    if not ray.is_initialized():
        return None
    return ray.get_runtime_context().gcs_address


def shutdown_ray(keep_logs: bool = False) -> None:
    """Stop the Ray this process started; its private session files are removed unless ``keep_logs`` (a
    failed run keeps them for debugging, and says where)."""
    ray.shutdown()
    while _PRIVATE_DIRS:
        path = _PRIVATE_DIRS.pop()
        if keep_logs:
            log.info("Ray session files of this run kept in %s", path)
        else:
            shutil.rmtree(path, ignore_errors=True)
