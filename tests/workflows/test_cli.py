"""The `influmix` command line: config printing and clear errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from workflows.cli import main


def test_config_command_prints_resolved_yaml(capsys):
    assert main(["config", "default", "mixture.beta=0.7"]) == 0
    out = capsys.readouterr().out
    assert "beta: 0.7" in out and "# run_id: default-" in out


def _keys(capsys, *overrides: str) -> dict[str, str]:
    assert main(["config", "default", *overrides]) == 0
    lines = [line[2:] for line in capsys.readouterr().out.splitlines() if line.startswith("# ")]
    return {k: v.split()[0] for k, v in (line.split(": ", 1) for line in lines if ": " in line)}


def test_config_prints_featurizer_and_analysis_keys_independent_of_cwd(tmp_path, monkeypatch, capsys):
    cache = f"model.cache_dir={tmp_path / 'cache'}"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    here = _keys(capsys, "output_uri=./out", cache)
    monkeypatch.chdir(tmp_path / "b")
    assert _keys(capsys, "output_uri=./out", cache) == here  # another cwd, the same keys
    # an analysis setting: same features, other run; a featurizer setting: other features
    beta = _keys(capsys, "mixture.beta=2.0", "influence.bootstrap=7", cache)
    assert beta["featurizer key"] == here["featurizer key"] and beta["run_id"] != here["run_id"]
    rank = _keys(capsys, "featurize.projection.rank=4", cache)
    assert rank["featurizer key"] != here["featurizer key"]
    assert set(here) >= {"featurizer key", "analysis key", "run_id"} and here["run_id"].startswith("default-")


def test_bad_config_exits_2_naming_the_field(capsys):
    assert main(["run", "default", "cluster.num_workers=0"]) == 2
    err = capsys.readouterr().err
    assert "influmix: error:" in err and "cluster.num_workers" in err


def test_missing_corpus_is_a_clear_error(tmp_path, capsys):
    code = main(["run", "default", f"corpus.paths=[{tmp_path}/nothing-here]", f"output_uri={tmp_path}/out"])
    assert code == 2
    assert "nothing-here" in capsys.readouterr().err


@pytest.mark.slow
def test_console_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "workflows.cli", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0
    for command in ("run", "refresh", "submit", "status", "logs", "config"):
        assert command in proc.stdout


def _raise_in_ray_task(exc: Exception):
    import ray

    @ray.remote(max_retries=0)
    def fail():
        raise exc

    def command(args):
        return ray.get(fail.remote())

    return command


@pytest.mark.slow
def test_errors_raised_in_ray_tasks_end_in_one_line_without_ray_traceback(ray_cluster, monkeypatch, capsys):
    import workflows.cli as cli
    from operators.errors import CorpusError

    monkeypatch.setattr(cli, "_cmd_config", _raise_in_ray_task(CorpusError("shard s3://b/x.parquet: no 'text' column")))
    assert cli.main(["config", "default"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "influmix: error: shard s3://b/x.parquet: no 'text' column"

    monkeypatch.setattr(cli, "_cmd_config", _raise_in_ray_task(ValueError("boom")))
    assert cli.main(["config", "default"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "influmix: internal error: ValueError: boom (rerun with -v for the traceback)"
    assert cli.main(["-v", "config", "default"]) == 1
    assert "Traceback" in capsys.readouterr().err


def _fake_submit(monkeypatch) -> dict:
    from cluster import jobs

    seen: dict = {}

    def fake_submit(address, command, submission_id, runtime_env, metadata=None, **kw):
        seen.update(command=command, runtime_env=runtime_env, metadata=metadata)
        return submission_id, True

    monkeypatch.setattr(jobs, "submit", fake_submit)
    return seen


def test_submit_resolves_a_relative_output_and_names_what_the_job_writes(monkeypatch, tmp_path, capsys):
    """The job runs in a copy of the working dir: a relative output_uri must not land there, and the job
    metadata must name the run id and paths the job really uses."""
    from workflows.config import load_config

    seen = _fake_submit(monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert main(["submit", "default", "output_uri=rel-out", "--address", "http://127.0.0.1:1"]) == 0
    command, meta = seen["command"], seen["metadata"]
    assert command[-2] == f"output_uri={tmp_path / 'rel-out'}"  # after the user's overrides: it wins
    expected = load_config("default", ["output_uri=rel-out"]).resolved_run_id()
    assert command[-1] == f"run_id={expected}" and meta["influmix_run_id"] == expected
    assert meta["output_uri"] == str(tmp_path / "rel-out")
    assert meta["influmix_latest_pointer"] == str(tmp_path / "rel-out" / "manifests" / "default" / "latest.json")
    # what the job parses from that command is the run the metadata names
    job_cfg = load_config("default", command[5:])
    assert job_cfg.resolved_run_id() == expected and job_cfg.output_uri == str(tmp_path / "rel-out")
    assert "local path" in capsys.readouterr().err


def test_submit_refresh_does_not_claim_a_run_id_it_cannot_know(monkeypatch, tmp_path):
    seen = _fake_submit(monkeypatch)
    assert main(["submit", "default", f"output_uri={tmp_path}/o", "--command", "refresh", "--stamp", "20261202",
                 "--address", "http://127.0.0.1:1"]) == 0
    meta = seen["metadata"]
    assert meta["influmix_run_id"] == "" and meta["influmix_run_id_rule"].startswith("default-20261202-step")
    assert not any(c.startswith("run_id=") for c in seen["command"])
    assert seen["command"][-2:] == ["--stamp", "20261202"]
