"""A refresh as a list of stages: `--until` stops after one, `--from` starts at one and only loads the
stages before it, through the public CLI, with the same published weights as an uninterrupted run."""

from __future__ import annotations

import glob
import json
import os

import pytest

from operators.errors import ConfigError
from tests.workflows.helpers import fast_overrides
from workflows.cli import STAGES_HELP, main
from workflows.mixture_refresh import STAGE_NAMES, stage_span

pytestmark = pytest.mark.slow


def test_stage_names_and_cli_help_agree() -> None:
    assert ", ".join(STAGE_NAMES) == STAGES_HELP
    assert STAGE_NAMES[0] == "featurize" and STAGE_NAMES[-1] == "publish"


def test_stage_span_validates_names_and_order() -> None:
    loaded, run = stage_span("solve", "validate")
    assert [s.name for s in loaded] == ["featurize", "aggregate"] and [s.name for s in run] == ["solve", "validate"]
    with pytest.raises(ConfigError, match="not a stage"):
        stage_span("nope")
    with pytest.raises(ConfigError, match="comes after"):
        stage_span("publish", "featurize")


def _run(capsys, *args: str) -> dict:
    code = main(["run", "default", *args])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out[out.index("{"):])


def test_until_then_from_publishes_what_one_run_does(ray_cluster, model_cache, tmp_path, capsys) -> None:
    base = fast_overrides(str(tmp_path / "out"), model_cache, "mixture.validation.enabled=false")
    # a later stage cannot start before the earlier ones ran
    assert main(["run", "default", *base, "--from", "solve"]) == 2
    assert "not featurized" in capsys.readouterr().err
    first = _run(capsys, *base, "--until", "featurize")
    assert first["manifest"] is None and first["stages"] == ["featurize"]
    root = first["run_root"]
    assert glob.glob(str(tmp_path / "out" / "datastore" / "*" / "featurizer.json"))  # the shared features
    assert os.path.exists(os.path.join(root, "stages", "featurize.json"))
    assert not os.path.exists(os.path.join(root, "_SUCCESS"))
    solved = _run(capsys, *base, "--from", "aggregate", "--until", "solve")
    assert solved["stages"] == ["aggregate", "solve"] and os.path.exists(os.path.join(root, "stages", "solve.json"))
    # publish alone: every earlier stage is loaded from storage, none is recomputed
    final = _run(capsys, *base, "--from", "publish")
    assert final["manifest"] and abs(sum(final["weights"].values()) - 1) < 1e-9
    other = fast_overrides(str(tmp_path / "other"), model_cache, "mixture.validation.enabled=false")
    whole = _run(capsys, *other)
    assert whole["weights"] == pytest.approx(final["weights"], abs=1e-12)
