"""Fault matrix (docs/RELIABILITY.md) on a real local Ray cluster and a real S3 API.

Each fault is injected into a small run of the embedded default; the run (or its rerun) must end with the
same feature shards as an undisturbed run: the same ids per shard (none lost, none duplicated) and
bitwise-equal features, and the same mixture weights.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from operators.features import datastore

from operators.io import storage
from operators.errors import InfluMixError
from operators.io.lease import LeaseHeld
from tests.fixtures.s3 import REGION, free_port
from tests.workflows.helpers import expected_ids, fast_overrides
from workflows.config import load_config
from workflows.mixture_refresh import run_mixture_refresh
from workflows.run.plan import build_plan, plan_completions
from tests.fixtures.readers import read_features

pytestmark = pytest.mark.slow

SMALL = ("sampling.rate=0.05", "featurize.batch_size=4")  # several batches per shard


def _overrides(out: str, cache: str, run_id: str, *extra: str) -> list[str]:
    return fast_overrides(out, cache, f"run_id={run_id}", *SMALL, *extra)


def _config(out: str, cache: str, run_id: str, *extra: str):
    return load_config("default", _overrides(out, cache, run_id, *extra))


def _features(cfg) -> dict[str, tuple[list[str], np.ndarray]]:
    """Per shard: ids (sorted) and their features as raw float32 bits."""
    plan = build_plan(cfg)
    out = {}
    for task in plan.tasks:
        table = read_features(datastore.feature_uri(plan.shard_root(task.shard_id), task.shard_id), cfg.storage)
        table = table.sort_by("id")
        out[task.shard_id] = (table.column("id").to_pylist(), datastore.features_to_numpy(table).view(np.uint32))
    return out


@pytest.fixture(scope="module")
def baseline(ray_cluster, model_cache, tmp_path_factory):
    """The undisturbed run every fault is compared with."""
    cfg = _config(str(tmp_path_factory.mktemp("baseline")), model_cache, "baseline")
    result = run_mixture_refresh(cfg)
    features = _features(cfg)
    plan = build_plan(cfg)
    corpus = [i for t in plan.corpus_tasks() for i in features[t.shard_id][0]]
    assert len(corpus) == len(set(corpus)) and set(corpus) == expected_ids(cfg, plan)
    return result, features


def assert_same_as_baseline(baseline, cfg, result=None) -> None:
    base_result, base = baseline
    got = _features(cfg)
    assert got.keys() == base.keys()
    for shard_id, (ids, bits) in base.items():
        assert got[shard_id][0] == ids, f"{shard_id}: examples lost or duplicated"
        assert np.array_equal(got[shard_id][1], bits), f"{shard_id}: features differ from the undisturbed run"
    done = plan_completions(build_plan(cfg), cfg.storage)
    assert {s: r.n_examples for s, r in done.items()} == {s: len(ids) for s, (ids, _) in base.items()}
    if result is not None:
        assert result.weights == pytest.approx(base_result.weights, abs=1e-12)


def _start_driver(tmp_path, cache: str, ray_cluster: dict, run_id: str, **env: str):
    """``influmix run`` of ``run_id`` on the shared cluster as a subprocess (its own session, so it can be
    killed whole); returns (overrides, cfg, plan, process)."""
    overrides = _overrides(str(tmp_path / "out"), cache, run_id, f"cluster.address={ray_cluster['address']}")
    cfg = load_config("default", overrides)
    proc = subprocess.Popen([sys.executable, "-m", "workflows.cli", "run", "default", *overrides],
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    return overrides, cfg, build_plan(cfg), proc


def _wait_for(predicate, proc: subprocess.Popen | None = None, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"driver exited early ({proc.returncode}):\n{proc.stdout.read().decode()[-3000:]}")
        time.sleep(0.2)
    pytest.fail("timed out waiting for the fault point")


def test_actor_killed_mid_shard_is_retried(baseline, model_cache, tmp_path, monkeypatch):
    marker = tmp_path / "crashed"
    cfg = _config(str(tmp_path / "out"), model_cache, "actor-kill")
    victim = build_plan(cfg).corpus_tasks()[1].shard_id
    monkeypatch.setenv("INFLUMIX_FAULT_INJECT", f"crash:{victim}:{marker}")
    result = run_mixture_refresh(cfg)
    assert victim in marker.read_text(), "the fault was not injected"
    assert_same_as_baseline(baseline, cfg, result)


def test_driver_killed_mid_featurize_then_resumed(baseline, ray_cluster, model_cache, tmp_path):
    _, cfg, plan, proc = _start_driver(tmp_path, model_cache, ray_cluster, "driver-kill",
                                       INFLUMIX_FAULT_INJECT="delay:*:1.5")
    _wait_for(lambda: storage.exists(plan.root) and len(plan_completions(plan, None)) >= 2, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    before = {sid: rec.finished_at for sid, rec in plan_completions(plan, None).items()}
    assert 2 <= len(before) < len(plan.tasks), "kill did not land mid-featurize"
    assert not storage.exists(storage.join(plan.root, "_SUCCESS"))

    result = run_mixture_refresh(cfg)  # the dead driver's lease (same host, dead pid) does not block
    after = plan_completions(plan, None)
    for sid, finished in before.items():  # completed shards were skipped, not redone
        assert after[sid].finished_at == finished
    assert_same_as_baseline(baseline, cfg, result)


def test_driver_killed_mid_publish_then_resumed(baseline, ray_cluster, model_cache, tmp_path):
    _, cfg, plan, proc = _start_driver(tmp_path, model_cache, ray_cluster, "publish-kill",
                                       INFLUMIX_DRIVER_FAULT="kill:publish")
    assert proc.wait(timeout=600) == -signal.SIGKILL, proc.stdout.read().decode()[-3000:]
    manifest_dir = storage.join(cfg.output_uri, "manifests", "default", "publish-kill")
    assert storage.exists(storage.join(manifest_dir, "manifest.json"))  # files written, then the kill
    assert not storage.exists(storage.join(plan.root, "_SUCCESS"))
    assert not storage.exists(storage.join(cfg.output_uri, "manifests", "default", "latest.json"))

    result = run_mixture_refresh(cfg)
    assert_same_as_baseline(baseline, cfg, result)
    latest = storage.read_json(result.outputs["latest"])
    assert latest["manifest_uri"] == result.manifest_uri and latest["sequence"] == 1


def test_s3_endpoint_down_mid_run_then_back(baseline, model_cache, tmp_path, monkeypatch):
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        boto3.client("s3", endpoint_url=endpoint, region_name=REGION).create_bucket(Bucket="flaky")
        cfg = _config("s3://flaky/out", model_cache, "s3-down", f"storage.endpoint_url={endpoint}",
                      f"storage.region={REGION}", "storage.retries=1", "cluster.shard_attempts=2")
        plan = build_plan(cfg)
        monkeypatch.setenv("INFLUMIX_FAULT_INJECT", "delay:*:1")
        stopped: list[int] = []

        def stop_mid_run() -> None:
            deadline = time.monotonic() + 400
            while time.monotonic() < deadline:
                try:
                    done = len(plan_completions(plan, cfg.storage))
                except InfluMixError:
                    done = 0
                if done >= 2:
                    server.stop()
                    stopped.append(done)
                    return
                time.sleep(0.2)

        stopper = threading.Thread(target=stop_mid_run)
        stopper.start()
        with pytest.raises(InfluMixError) as err:
            run_mixture_refresh(cfg)
        stopper.join()
        assert stopped and stopped[0] < len(plan.tasks), "the endpoint did not go down mid-run"
        assert f"127.0.0.1:{port}" in str(err.value)  # the error names the endpoint

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()  # back (moto keeps its objects in-process)
        monkeypatch.delenv("INFLUMIX_FAULT_INJECT")
        result = run_mixture_refresh(cfg)
        assert_same_as_baseline(baseline, cfg, result)
    finally:
        server.stop()


def test_disk_full_while_writing_a_shard(baseline, model_cache, tmp_path, monkeypatch):
    marker = tmp_path / "enospc"
    cfg = _config(str(tmp_path / "out"), model_cache, "disk-full")
    plan = build_plan(cfg)
    victim = plan.corpus_tasks()[2].shard_id
    monkeypatch.setenv("INFLUMIX_FAULT_ENOSPC", f"{victim}/part-:{marker}")
    result = run_mixture_refresh(cfg)
    assert victim in marker.read_text(), "the fault was not injected"
    assert plan_completions(plan, None)[victim].attempt == 2  # failed write, retried
    features_dir = datastore.feature_uri(plan.shard_root(victim), victim)  # the shard's part folder
    assert not [n for n in os.listdir(features_dir) if n.startswith(".")], "partial temp file left behind"
    assert_same_as_baseline(baseline, cfg, result)


def test_two_concurrent_drivers(baseline, ray_cluster, model_cache, tmp_path, capsys):
    from workflows.cli import main

    overrides, cfg, plan, first = _start_driver(tmp_path, model_cache, ray_cluster, "twins",
                                                INFLUMIX_FAULT_INJECT="delay:*:1")
    _wait_for(lambda: storage.exists(storage.join(plan.root, "_lease.json")), first)

    # the second driver exits at once with a clear message (exit code 3) and touches nothing
    assert main(["run", "default", *overrides]) == 3
    err = capsys.readouterr().err
    assert "run twins is held by another driver" in err and f"pid {first.pid}" in err
    assert first.poll() is None

    # a driver told to wait gets the first driver's result once it finishes, without featurizing again
    waiting = load_config("default", [*overrides, "cluster.lease_wait_s=600"])
    with pytest.raises(LeaseHeld):  # (and a zero wait is refused in-process too)
        run_mixture_refresh(cfg)
    second = run_mixture_refresh(waiting)
    out = first.communicate(timeout=120)[0].decode()
    assert first.returncode == 0, out[-3000:]
    printed = json.loads(re.search(r"^\{\n.*?^\}$", out, re.S | re.M).group(0))  # the CLI's result
    assert second.manifest_uri == printed["manifest"] and second.weights == pytest.approx(printed["weights"])
    assert second.influence is None  # returned the finished run instead of computing it
    assert all(r.attempt == 1 for r in plan_completions(plan, None).values())
    latest = storage.read_json(storage.join(cfg.output_uri, "manifests", "default", "latest.json"))
    assert latest["run_id"] == "twins" and latest["sequence"] == 1  # published once
    assert_same_as_baseline(baseline, cfg, second)


def test_changed_plan_under_same_run_id(ray_cluster, model_cache, tmp_path, caplog):
    """An unfinished run whose inputs changed goes on with the new plan (logged); a finished one is refused."""
    from operators.errors import ConfigError
    from workflows.run.plan import check_or_record_plan, read_recorded_plan

    cfg = _config(str(tmp_path / "out"), model_cache, "plan-change")
    plan = build_plan(cfg)
    assert check_or_record_plan(plan, cfg.storage) is False
    assert check_or_record_plan(plan, cfg.storage) is True
    smaller = type(plan)(run_id=plan.run_id, root=plan.root, tasks=plan.tasks[1:], store=plan.store)
    with caplog.at_level("WARNING", logger="workflows.run.plan"):
        assert check_or_record_plan(smaller, cfg.storage) is True
    assert "input shards changed" in caplog.text and plan.tasks[0].shard_id in caplog.text
    assert read_recorded_plan(plan.root, cfg.storage)["plan_hash"] == smaller.plan_hash
    storage.write_json_atomic(storage.join(plan.root, "_SUCCESS"), {"manifest_uri": "x"})
    with pytest.raises(ConfigError, match="plan of run plan-change changed since it finished"):
        check_or_record_plan(plan, cfg.storage)
