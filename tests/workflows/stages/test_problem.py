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


def _stage_manifest(run_id: str, weights: dict[str, float], tokens: float, previous_uri: str | None):
    from operators.manifest.schema import DomainEntry, InfluenceBlock, Manifest, Provenance

    names = list(weights)
    return Manifest(
        name="default", domains=[DomainEntry(name=n, weight=w, influence_score=0.0) for n, w in weights.items()],
        influence=InfluenceBlock(gi=[[0.0] for _ in names], gi_normalized=[[0.0] for _ in names],
                                 domain_order=names, target_order=["t"]),
        solver={"name": "tikmix_d"}, budget={"tokens_next_stage": tokens},
        provenance=Provenance(model_path="/m", model_fingerprint="f", config_hash="h", run_id=run_id,
                              created_at="2026-11-23T00:00:00+00:00", influmix_version="0.1.0",
                              previous_manifest_uri=previous_uri))


def test_planned_epochs_include_what_the_chain_of_earlier_stages_drew(tmp_path, model_cache):
    cfg = fast_config(str(tmp_path), model_cache, "mixture.budget.tokens_next_stage=100000")
    first = _stage_manifest("r1", {d: 0.2 for d in DOMAINS}, 200_000, None)
    first_uri = tmp_path / "r1.json"
    first_uri.write_text(first.model_dump_json())
    second = _stage_manifest("r2", {"changelog": 0.6, "code": 0.1, "config": 0.1, "docs": 0.1, "legal": 0.1},
                             100_000, str(first_uri))
    problem = build_problem(cfg, DOMAINS, {d: 100_000 for d in DOMAINS}, second)
    chain = problem.info["consumed_by_earlier_stages"]
    assert chain["stages"] == ["r2", "r1"]
    assert chain["tokens"]["changelog"] == pytest.approx(0.2 * 200_000 + 0.6 * 100_000)
    w = np.full(5, 0.2)
    assert problem.epochs(w)["changelog"] == pytest.approx((100_000 + 20_000) / 100_000)
    assert problem.upper[0] == pytest.approx(min(0.6, (4 * 100_000 - 100_000) / 100_000))  # box 0.6 binds
    missing = _stage_manifest("r3", {d: 0.2 for d in DOMAINS}, 50_000, str(tmp_path / "gone.json"))
    chain = build_problem(cfg, DOMAINS, {d: 100_000 for d in DOMAINS}, missing).info["consumed_by_earlier_stages"]
    assert chain["stages"] == ["r3"]  # the unreadable earlier manifest stops the chain, with a warning


def test_a_manifest_of_the_same_checkpoint_planned_a_stage_not_yet_trained(tmp_path, model_cache):
    cfg = fast_config(str(tmp_path), model_cache, "mixture.budget.tokens_next_stage=100000")
    earlier = _stage_manifest("r1", {d: 0.2 for d in DOMAINS}, 200_000, None)  # model_path "/m"
    again = build_problem(cfg, DOMAINS, {d: 100_000 for d in DOMAINS}, earlier, model_uri="/m")
    assert again.info["consumed_by_earlier_stages"]["same_checkpoint"] == ["r1"]
    assert sum(again.info["consumed_by_earlier_stages"]["tokens"].values()) == 0
    later = build_problem(cfg, DOMAINS, {d: 100_000 for d in DOMAINS}, earlier, model_uri="/m2")
    assert later.info["consumed_by_earlier_stages"]["stages"] == ["r1"]
