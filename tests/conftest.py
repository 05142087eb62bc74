"""Shared fixtures: a real local Ray cluster (session), a moto S3 server, a cached tiny model."""

from __future__ import annotations

import os
import socket

import pytest

pytest_plugins = ["tests.fixtures.s3"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> str:
    """One cache dir for the embedded default checkpoint, shared by all tests (built once)."""
    path = str(tmp_path_factory.mktemp("influmix-cache"))
    os.environ["INFLUMIX_TEST_CACHE"] = path
    return path


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """A real local Ray cluster (started after the moto S3 server so workers inherit its fake AWS
    credentials): 4 logical CPUs, 2 logical GPUs (so GPU pinning is exercised on CPU
    machines), the dashboard (Ray Jobs API) and a metrics export port."""
    import ray

    metrics_port = free_port()
    dashboard_port = free_port()
    ctx = ray.init(address="local", num_cpus=4, num_gpus=2, include_dashboard=True, dashboard_port=dashboard_port,
                   _metrics_export_port=metrics_port, object_store_memory=300 * 1024 * 1024,
                   logging_level="WARNING")
    info = {"metrics_port": metrics_port, "dashboard_url": f"http://{ctx.dashboard_url}",
            "address": ctx.address_info["address"]}
    yield info
    ray.shutdown()
