"""Driver faults through the public CLI, as a scheduled job meets them (docs/RELIABILITY.md fault matrix):

- another job's `ray start` cluster on the host, stopped mid-run: the refresh runs on its own cluster;
- the refresh's own Ray cluster dies mid-run: one line naming the cause, lease released, exit code 5;
- another driver takes the run lease over mid-run: this driver stops within seconds (exit 4) and writes
  no stage record, report or manifest.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.workflows.helpers import fast_overrides

REPO = Path(__file__).resolve().parents[3]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(ray_tmp: str | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    if ray_tmp:
        env["RAY_TMPDIR"] = ray_tmp
    return env


def _cli(out: Path, cache: str, *extra: str, env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "workflows.cli", "run", "default", *fast_overrides(str(out), cache, *extra)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(what: str, probe, timeout_s: float = 240.0, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the CLI exited ({proc.returncode}) before {what}: {proc.stderr.read()}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _private_ray_dir(pid: int) -> str | None:
    found = [p for p in glob.glob(f"/tmp/influmix-ray-{pid}-*/session_*") if not p.endswith("session_latest")]
    return found[0] if found else None


def _processes() -> list[tuple[int, str]]:
    """(pid, command line) of every process on this host."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                found.append((int(entry), Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()))
            except OSError:
                pass
    return found


def _kill_tree(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=60)


def _wait_for_features(out: Path, proc: subprocess.Popen) -> None:
    """Until the first feature part is on storage (the run is mid-featurize)."""
    _wait_for("featurization", lambda: glob.glob(str(out / "datastore/*/shards/*/features/*")), proc=proc)


def _finish(proc: subprocess.Popen) -> tuple[str, float, list[str]]:
    """Wait for the driver to exit: (stderr, seconds it took from now, its ``influmix:`` lines)."""
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=120)
    return err, time.monotonic() - t0, [ln for ln in err.splitlines() if ln.startswith("influmix:")]


def test_a_foreign_ray_cluster_is_not_joined_and_its_stop_does_not_matter(tmp_path, model_cache):
    ray_tmp = tempfile.mkdtemp(prefix="fr", dir="/tmp")  # short: Ray's socket paths
    foreign = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={_free_port()}", "--num-cpus=1",
         "--include-dashboard=false", "--disable-usage-stats", "--block"],
        env=_env(ray_tmp), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # the file through which a plain ray.init() would join the foreign cluster
        _wait_for("the foreign cluster", lambda: os.path.exists(f"{ray_tmp}/ray/ray_current_cluster"), 120)
        proc = _cli(tmp_path / "out", model_cache, "mixture.validation.enabled=false", env=_env(ray_tmp))
        try:
            _wait_for("the refresh's private cluster", lambda: _private_ray_dir(proc.pid), proc=proc)
            os.killpg(foreign.pid, signal.SIGKILL)  # the foreign cluster goes away mid-run
            foreign.wait(timeout=60)
            out, err = proc.communicate(timeout=480)
        finally:
            _kill_tree(proc)
        assert proc.returncode == 0, err
        result = json.loads(out)
        assert Path(result["manifest"]).is_file() and abs(sum(result["weights"].values()) - 1) < 1e-9
    finally:
        if foreign.poll() is None:
            os.killpg(foreign.pid, signal.SIGKILL)
        for pid, cmdline in _processes():  # processes of the foreign cluster that left its group
            if ray_tmp in cmdline:
                os.kill(pid, signal.SIGKILL)


def test_losing_the_own_ray_cluster_mid_run_exits_5_with_one_line_and_frees_the_lease(tmp_path, model_cache):
    out = tmp_path / "out"
    proc = _cli(out, model_cache, env=_env())
    try:
        session = _wait_for("the private cluster", lambda: _private_ray_dir(proc.pid), proc=proc)
        _wait_for_features(out, proc)
        for pid, cmdline in _processes():
            if "gcs_server" in cmdline.split(" ", 1)[0] and session in cmdline:
                os.kill(pid, signal.SIGKILL)
        err, elapsed, lines = _finish(proc)
    finally:
        _kill_tree(proc)
    assert proc.returncode == 5, err
    assert elapsed < 45  # the watchdog, not Ray's 60 s GCS timeout
    assert len(lines) == 1 and "the Ray cluster went away" in lines[0] and "lease released" in lines[0]
    assert "Traceback" not in err
    assert not glob.glob(str(out / "runs/*/_lease.json"))  # the next driver starts at once


def test_a_driver_whose_lease_is_taken_over_stops_within_seconds_and_writes_nothing_more(tmp_path,
                                                                                           model_cache):
    out = tmp_path / "out"
    proc = _cli(out, model_cache, "cluster.lease_ttl_s=3", env=_env())
    try:
        _wait_for_features(out, proc)
        lease = Path(glob.glob(str(out / "runs/*/_lease.json"))[0])
        record = json.loads(lease.read_text())
        record.update({"owner": "another-driver", "pid": 1, "expires_at": time.time() + 3600})
        lease.write_text(json.dumps(record))  # another driver took the run over
        err, elapsed, lines = _finish(proc)
    finally:
        _kill_tree(proc)
    assert proc.returncode == 4, err
    assert elapsed < 15  # one renewal interval (1 s) plus cancelling the in-flight work
    assert len(lines) == 1 and "taken over" in lines[0], err
    run = lease.parent
    assert not (run / "stages").exists() and not (run / "report.json").exists()
    assert not list(out.glob("manifests/**/manifest.json")) and not list(out.glob("manifests/**/latest.json"))
    assert json.loads(lease.read_text())["owner"] == "another-driver"  # the new owner's lease is untouched
