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
