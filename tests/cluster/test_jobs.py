"""Ray Jobs submission against a real local dashboard: run, status, idempotent re-submission."""

from __future__ import annotations

import json

import pytest

from cluster import jobs
from tests.workflows.helpers import fast_overrides
from workflows.cli import main
from workflows.config import load_config

pytestmark = pytest.mark.slow


def test_submit_runs_the_workflow_and_is_idempotent(ray_cluster, model_cache, tmp_path, capsys):
    address = ray_cluster["dashboard_url"]
    out = tmp_path / "out"
    overrides = fast_overrides(str(out), model_cache, "run_id=jobs-test")
    argv = ["submit", "default", *overrides, "--address", address, "--wait", "--timeout", "600"]
    cfg = load_config("default", overrides)
    expected_id = jobs.submission_id_for(cfg.name, cfg.config_hash(), overrides)
    code = main(argv)
    captured = capsys.readouterr()
    info = jobs.status(address, expected_id)
    assert code == 0, (captured, info, jobs.logs(address, expected_id)[-4000:])
    first = json.loads(captured.out.splitlines()[0])
    assert first == {"submission_id": expected_id, "created": True}
    assert info["status"] == "SUCCEEDED"
    assert info["metadata"]["influmix_run_id"] == "jobs-test"
    assert (out / "manifests" / "default" / "jobs-test" / "manifest.json").is_file()
    assert "published" in jobs.logs(address, first["submission_id"])

    # the same config + overrides map to the same submission id: nothing is submitted twice
    assert main(["submit", "default", *overrides, "--address", address]) == 0
    again = json.loads(capsys.readouterr().out.strip())
    assert again == {"submission_id": first["submission_id"], "created": False}

    assert main(["status", first["submission_id"], "--address", address]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "SUCCEEDED"


def test_submission_ids_are_deterministic():
    a = jobs.submission_id_for("default", "abc", ["x=1"])
    assert a == jobs.submission_id_for("default", "abc", ["x=1"])
    assert a != jobs.submission_id_for("default", "abc", ["x=2"])
    assert jobs.submission_id_for("n", "h", [], "20261123").endswith("-20261123")


def test_unreachable_jobs_api_gives_clear_error(capsys):
    code = main(["status", "nope", "--address", "http://127.0.0.1:9"])
    assert code == 2
    assert "cannot reach the Ray Jobs API at http://127.0.0.1:9" in capsys.readouterr().err


def test_credentials_are_not_forwarded_to_jobs(monkeypatch, capsys, tmp_path):
    import pytest

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-ship-me")
    with pytest.raises(jobs.JobError, match=r"refusing to forward \['AWS_SECRET_ACCESS_KEY'\]"):
        jobs.build_runtime_env(None, {"AWS_SECRET_ACCESS_KEY": "do-not-ship-me"})
    assert main(["submit", "default", f"output_uri={tmp_path}", "--address", "http://127.0.0.1:1",
                 "--env", "AWS_SECRET_ACCESS_KEY"]) == 2
    err = capsys.readouterr().err
    assert "refusing to forward" in err and "do-not-ship-me" not in err


def test_job_metadata_and_runtime_env_hold_no_credentials(monkeypatch, capsys, tmp_path):
    secret = "sEcReT-influmix-0123456789"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("INFLUMIX_OUTPUT", str(tmp_path))
    seen: dict = {}

    def fake_submit(address, command, submission_id, runtime_env, metadata=None, **kw):
        seen.update(command=command, runtime_env=runtime_env, metadata=metadata)
        return submission_id, True

    monkeypatch.setattr(jobs, "submit", fake_submit)
    assert main(["submit", "default", "--address", "http://127.0.0.1:1", "--env", "INFLUMIX_OUTPUT"]) == 0
    dumped = json.dumps(seen, default=str)
    assert seen["metadata"]["influmix_run_id"] and secret not in dumped
    assert "AWS_SECRET_ACCESS_KEY" not in dumped
