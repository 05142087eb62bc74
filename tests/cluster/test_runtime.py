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


def test_local_mode_starts_a_private_cluster_with_its_own_temp_dir(monkeypatch):
    kwargs = _init_kwargs(monkeypatch, ClusterSpec())
    assert kwargs["address"] == "local"  # never joins a `ray start` cluster that happens to run here
    assert "influmix-ray-" in kwargs["_temp_dir"]


def test_auto_or_an_address_joins(monkeypatch):
    seen: dict = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    assert runtime.init_ray(ClusterSpec(address="auto")) is False
    assert seen["address"] == "auto" and "_temp_dir" not in seen


def test_a_private_cluster_leaves_no_session_files_after_a_clean_shutdown(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "PRIVATE_TEMP_ROOT", str(tmp_path))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: None)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    runtime.init_ray(ClusterSpec())
    runtime.shutdown_ray(keep_logs=True)  # a failed run keeps them
    assert len(list(tmp_path.iterdir())) == 1
    runtime.init_ray(ClusterSpec())
    runtime.shutdown_ray()
    assert len(list(tmp_path.iterdir())) == 1  # the clean run's folder is gone
