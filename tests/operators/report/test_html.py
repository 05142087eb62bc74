"""report.html: self-contained, every figure present, hostile names escaped, the gain sentence honest."""

from __future__ import annotations

import base64
import re

from operators.report.html import gain_sentence, render_html

DOMAINS = ["code", "docs", "<script>alert(1)</script>"]


def _report(published: str = "tikmix_d", relaxed: bool = False) -> tuple[dict, dict]:
    weights = dict(zip(DOMAINS, [0.5, 0.3, 0.2]))
    budget = {"tokens_next_stage": 1e6, "source": "config", "max_epochs": 4.0}
    if relaxed:
        budget.update(max_epochs=6.0, relaxed={"reason": "too big", "max_epochs_configured": 4.0,
                                               "max_epochs_used": 6.0})
    report = {
        "weights": weights, "published": published, "domain_scores": dict(zip(DOMAINS, [1.2, 0.1, -0.4])),
        "timings_s": {"featurize": 30.0, "total": 60.0},
        "problem": {"domains": DOMAINS, "reference": "uniform", "reference_weights": {d: 1 / 3 for d in DOMAINS},
                    "upper": {d: 0.6 for d in DOMAINS}, "budget": budget,
                    "planned_epochs": dict(zip(DOMAINS, [1.0, 2.0, 0.5])),
                    "evidence": {"shrinkage": "empirical_bayes", "raw_scores": dict(zip(DOMAINS, [1.3, 0.2, -0.5])),
                                 "kept": {d: [0.9] for d in DOMAINS}}},
        "validation": {"published": published, "reference": "reference", "steps": 16, "candidates": {
            "reference": {"gain": 0.0, "ci": [0.0, 0.0]},
            "tikmix_d": {"gain": 0.03, "ci": [0.01, 0.05]},
            "baseline:dsir": {"gain": 0.01, "ci": [-0.01, 0.03]}}},
    }
    manifest = {"provenance": {"run_id": "r1", "model_path": "/m", "checkpoint_step": 100},
                "domains": [{"name": d, "score_ci": [s - 0.2, s + 0.2], "weight_ci": [w - 0.05, w + 0.05],
                             "previous_weight": 0.25}
                            for d, s, w in zip(DOMAINS, [1.3, 0.2, -0.5], [0.5, 0.3, 0.2])]}
    return report, manifest


def test_page_is_self_contained_with_four_figures_and_escaped_names():
    report, manifest = _report(relaxed=True)
    page = render_html(report, manifest)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 4
    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in images)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "http://" not in page and "https://" not in page  # nothing to fetch: opens offline
    assert "reuse cap relaxed" in page and "4 → 6" in page
    assert "16-step" in page and "0.0300" in page


def test_gain_sentence_says_when_nothing_was_published_and_when_validation_was_off():
    report, _ = _report(published="reference")
    assert "reference mixture was kept" in gain_sentence(report["validation"])
    assert "not measured" in gain_sentence(None)


def test_headline_uses_the_fresh_confirmation_and_the_stage_horizon():
    report, _ = _report()
    row = report["validation"]["candidates"]["tikmix_d"]
    row["confirmed"] = {"gain": 0.021, "ci": [0.004, 0.038], "stage_gain": 0.05, "stage_ci": [-0.01, 0.11]}
    report["validation"]["horizons"] = {"stage_steps": 160}
    text = gain_sentence(report["validation"])
    assert "fresh seeds and held-back examples that did not choose it" in text and "0.0210" in text
    assert "whole next stage (160 steps): 0.0500" in text and "simultaneous" not in text
    report["validation"]["confirmation"] = {"finalists": ["tikmix_d", "baseline:dsir"]}
    row["confirmed"]["confidence"] = 0.95
    assert "simultaneous over the 2 finalists re-measured there (95.0%)" in gain_sentence(report["validation"])
    row.pop("confirmed")
    assert "not selection-corrected" in gain_sentence(report["validation"])
