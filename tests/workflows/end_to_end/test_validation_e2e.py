"""End to end through the public CLI: `influmix run` measures exploration candidates before publishing,
confirms the choice on fresh seeds, and labels which horizon each reported gain is at."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.workflows.helpers import fast_overrides


@pytest.mark.slow
def test_run_measures_exploration_candidates_and_labels_horizons(tmp_path, model_cache) -> None:
    out = tmp_path / "out"
    args = fast_overrides(str(out), model_cache, "mixture.validation.steps=6",
                          "mixture.validation.reference_examples=32", "mixture.validation.explore.dirichlet=3",
                          "mixture.budget.tokens_next_stage=61440")  # 60 steps of 8 × 128 tokens
    proc = subprocess.run([sys.executable, "-m", "workflows.cli", "run", "default", *args], capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_root,) = (out / "runs").iterdir()
    report = json.loads((run_root / "report.json").read_text())
    v = report["validation"]
    rows = v["candidates"]
    explored = {n for n in rows if n.startswith("explore:")}
    assert sum(n.startswith("explore:dirichlet") for n in explored) >= 2
    assert any(n.startswith("explore:heavy:") for n in explored)
    # each target's own optimum, unless it fell within min_l1 of another candidate
    assert explored & {"explore:target:target_mixed", "explore:target:val_code", "explore:target:val_docs"}
    assert v["rounds"]["first"] + v["rounds"]["second"] == len(rows)
    for name in explored:  # measured like every other candidate, at both horizons
        row = rows[name]
        assert row["source"].startswith("exploration") and len(row["per_target_delta"]) == 3
        assert row["ci"][0] <= row["gain"] <= row["ci"][1] and row["stage_ci"][0] <= row["stage_gain"] <= row["stage_ci"][1]
    hz = v["horizons"]
    assert hz["probe_points"] == [2, 3, 6] and hz["stage_steps"] == pytest.approx(60.0)
    assert v["confirmation"]["published"] == v["published"] and v["target_balance"] == "nats"
    assert report["cost"]["total"] > report["cost"]["probes"] > 0 and report["cost"]["grid"] > 0
    md = (run_root / "report.md").read_text()
    assert "probe-horizon gain (6-step probes, measured)" in md
    assert "stage-horizon gain (extrapolated to 60 steps from 6-step probes measured at steps [2, 3, 6])" in md
    assert "Confirmation on fresh seeds" in md and "## Compute (training-step equivalents)" in md
    (manifest_path,) = (out / "manifests" / "default").glob("*/manifest.json")
    summary = json.loads(manifest_path.read_text())["validation"]
    assert summary["gain_horizon"] == hz["probe_label"] and summary["stage_gain_horizon"] == hz["stage_label"]
    # every published mixture says where its weight intervals come from (or why it has none)
    assert "Weight CI: " in md and report["weight_ci"]
    ci = v["surrogate"].get("weight_ci")
    assert v["surrogate"]["proposed"] >= 1 and ci["replicates"] >= 1  # this setup's surrogate has skill
    for name, row in ci["proposals"].items():  # intervals from refits on resampled first rounds
        w = rows[name]["weights"]
        assert all(row["low"][d] <= row["high"][d] for d in w)
    manifest = json.loads(manifest_path.read_text())
    if v["published"] in ci["proposals"]:
        assert all(d["weight_ci"] is not None for d in manifest["domains"])
