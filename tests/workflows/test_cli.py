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
