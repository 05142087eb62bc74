"""The mixture problem of a refresh: budget, bounds, and graceful relaxation of infeasible reuse caps."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from workflows.cli import main
from workflows.stages.problem import build_problem

from tests.workflows.helpers import fast_config, fast_overrides

DOMAINS = ["changelog", "code", "config", "docs", "legal"]


def test_budget_beyond_max_epochs_relaxes_caps_with_a_warning(tmp_path, model_cache, caplog):
    # 10M tokens of stage on 100k tokens of data per domain: 4 epochs cover only 0.2 of the stage
    cfg = fast_config(str(tmp_path), model_cache, "mixture.budget.tokens_next_stage=10000000")
    with caplog.at_level(logging.WARNING, logger="workflows.stages.problem"):
        problem = build_problem(cfg, DOMAINS, {d: 100_000 for d in DOMAINS}, None)
    relaxed = problem.info["budget_relaxed"]
    assert relaxed["max_epochs_configured"] == 4.0
    assert relaxed["max_epochs_used"] == pytest.approx(20.0, rel=1e-6)  # 5 × 100k × 20 = 10M
    assert problem.upper.sum() == pytest.approx(1.0, abs=1e-9)
    assert any("relaxing every reuse cap" in r.getMessage() and "max_epochs 4 -> 20" in r.getMessage()
               for r in caplog.records)
    assert np.isclose(problem.reference.sum(), 1.0)


def test_feasible_budget_is_not_relaxed(tmp_path, model_cache):
    cfg = fast_config(str(tmp_path), model_cache, "mixture.budget.tokens_next_stage=100000")
    problem = build_problem(cfg, DOMAINS, {d: 100_000 for d in DOMAINS}, None)
    assert problem.info["budget_relaxed"] is None


@pytest.mark.slow
def test_cli_run_with_an_oversized_budget_publishes_and_reports_the_relaxed_caps(tmp_path, model_cache, capsys):
    out = tmp_path / "out"
    code = main(["run", "default", *fast_overrides(str(out), model_cache, "mixture.validation.enabled=false",
                                                    "mixture.budget.tokens_next_stage=1e9")])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads(Path(json.loads(capsys.readouterr().out)["manifest"]).read_text())
    relaxed = manifest["budget"]["relaxed"]
    assert relaxed["max_epochs_configured"] == 4.0 and relaxed["max_epochs_used"] > 4.0
    assert sum(relaxed["caps_used"].values()) == pytest.approx(1.0, abs=1e-6)
    report_md = next(out.glob("runs/*/report.md")).read_text()
    assert "reuse cap relaxed" in report_md
