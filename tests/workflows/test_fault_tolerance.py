"""Fault tests on a real local Ray cluster: a worker killed mid-shard, a driver killed mid-run.

Either way the rerun completes with every sampled example featurized exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from operators import datastore, storage
from tests.workflows.helpers import expected_ids, fast_config, fast_overrides
from workflows.mixture_refresh import run_mixture_refresh
from workflows.plan import build_plan


def _featurized_ids(plan) -> list[str]:
    ids: list[str] = []
    for task in plan.corpus_tasks():
        table = datastore.read_feature_shard(datastore.feature_uri(plan.root, task.shard_id))
        ids.extend(table.column("id").to_pylist())
    return ids


def test_actor_killed_mid_shard_is_retried(ray_cluster, model_cache, tmp_path, monkeypatch):
    marker = tmp_path / "crashed"
    cfg = fast_config(str(tmp_path / "out"), model_cache, "run_id=actor-kill")
    plan = build_plan(cfg)
    victim = plan.corpus_tasks()[1].shard_id
    monkeypatch.setenv("INFLUMIX_FAULT_INJECT", f"crash:{victim}:{marker}")
    result = run_mixture_refresh(cfg)
    assert marker.exists(), "the fault was not injected"
    assert victim in marker.read_text()
    ids = _featurized_ids(plan)
    assert len(ids) == len(set(ids)), "duplicated examples after a retried shard"
    assert set(ids) == expected_ids(cfg, plan), "lost examples after a retried shard"
    assert storage.exists(result.manifest_uri)


def test_driver_killed_mid_run_then_resumed(ray_cluster, model_cache, tmp_path):
    out = str(tmp_path / "out")
    overrides = fast_overrides(out, model_cache, "run_id=driver-kill", f"cluster.address={ray_cluster['address']}")
    env = {**os.environ, "INFLUMIX_FAULT_INJECT": "delay:*:1.5", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "workflows.cli", "run", "default", *overrides], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    cfg = fast_config(out, model_cache, "run_id=driver-kill", f"cluster.address={ray_cluster['address']}")
    plan = build_plan(cfg)
    deadline = time.monotonic() + 400
    done: dict = {}
    while time.monotonic() < deadline and proc.poll() is None:
        if storage.exists(plan.root):
            done = datastore.list_completions(plan.root)
            if len(done) >= 2:
                break
        time.sleep(0.2)
    assert proc.poll() is None, f"driver ended before it could be killed:\n{proc.stdout.read().decode()[-3000:]}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert 2 <= len(done) < len(plan.tasks), "kill did not land mid-run"
    assert not storage.exists(storage.join(plan.root, "_SUCCESS"))
    before = {sid: rec.finished_at for sid, rec in datastore.list_completions(plan.root).items()}

    result = run_mixture_refresh(cfg)
    after = datastore.list_completions(plan.root)
    assert set(after) == {t.shard_id for t in plan.tasks}
    for sid, finished in before.items():  # completed shards were skipped, not redone
        assert after[sid].finished_at == finished
    ids = _featurized_ids(plan)
    assert len(ids) == len(set(ids))
    assert set(ids) == expected_ids(cfg, plan)
    assert storage.exists(result.manifest_uri)


def test_changed_plan_under_same_run_id_is_refused(ray_cluster, model_cache, tmp_path):
    from operators.errors import ConfigError
    from workflows.plan import check_or_record_plan

    cfg = fast_config(str(tmp_path / "out"), model_cache, "run_id=plan-change")
    plan = build_plan(cfg)
    assert check_or_record_plan(plan, cfg.storage) is False
    assert check_or_record_plan(plan, cfg.storage) is True
    smaller = type(plan)(run_id=plan.run_id, root=plan.root, tasks=plan.tasks[1:])
    with pytest.raises(ConfigError, match="plan of run plan-change changed"):
        check_or_record_plan(smaller, cfg.storage)
