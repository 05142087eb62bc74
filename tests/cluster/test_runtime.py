"""Local Ray start options: the dashboard binds to 127.0.0.1 unless configured otherwise."""

from __future__ import annotations

import ray

from cluster import runtime
from cluster.spec import ClusterSpec


def _init_kwargs(monkeypatch, spec: ClusterSpec) -> dict:
    seen: dict = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert runtime.init_ray(spec) is True
    return seen


def test_local_dashboard_binds_to_loopback_by_default(monkeypatch):
    kwargs = _init_kwargs(monkeypatch, ClusterSpec(include_dashboard=True))
    assert kwargs["dashboard_host"] == "127.0.0.1" and kwargs["include_dashboard"] is True


def test_dashboard_host_is_explicit_opt_in(monkeypatch):
    assert _init_kwargs(monkeypatch, ClusterSpec(dashboard_host="0.0.0.0"))["dashboard_host"] == "0.0.0.0"
