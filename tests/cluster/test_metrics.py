"""Custom metrics reach the Ray metrics endpoint (what Prometheus / the dashboard scrape)."""

from __future__ import annotations

import time
import urllib.request

import pytest
import ray

from cluster.metrics import DriverMetrics, WorkerMetrics

pytestmark = pytest.mark.slow


@ray.remote(num_cpus=0.1)
def _emit() -> bool:
    m = WorkerMetrics("metrics-test", "w0")
    m.batch("corpus", ["code", "code", "docs"], [10, 20, 5])
    m.shard_done(3, 1.5)
    return True


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def test_worker_and_driver_metrics_are_exported(ray_cluster):
    assert ray.get(_emit.remote())
    driver = DriverMetrics("metrics-test")
    driver.progress("featurize", total=10, done=4, failed=0, rate=2.5, eta=3.0)
    driver.weights({"code": 0.7, "docs": 0.3})
    wanted = ("ray_influmix_tokens_total", "ray_influmix_shards_completed", "ray_influmix_domain_weight")
    deadline = time.monotonic() + 90
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = [ln for ln in _scrape(ray_cluster["metrics_port"]).splitlines() if "metrics-test" in ln]
        if all(any(ln.startswith(w) for ln in lines) for w in wanted):
            break
        time.sleep(1)
    code = [ln for ln in lines if ln.startswith("ray_influmix_tokens_total") and 'domain="code"' in ln]
    assert code and float(code[0].rsplit(" ", 1)[1]) == 30.0
    assert any(ln.startswith("ray_influmix_shards_completed") and ln.endswith(" 4.0") for ln in lines)
    weight = [ln for ln in lines if ln.startswith("ray_influmix_domain_weight") and 'domain="docs"' in ln]
    assert weight and float(weight[0].rsplit(" ", 1)[1]) == 0.3


def test_metrics_are_noops_without_ray(monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    m = WorkerMetrics("x", "y")
    m.batch("corpus", ["a"], [1])  # must not raise without a cluster
    m.shard_failed("Boom")
    assert type(m.examples).__name__ == "_Noop"
