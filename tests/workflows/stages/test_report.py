"""Run report helpers: influence-ranking stability across refreshes."""

from __future__ import annotations

from operators.manifest.schema import DomainEntry, InfluenceBlock, Manifest, Provenance
from workflows.stages.report import ranking_stability, render_markdown


def _manifest(scores: dict[str, float]) -> Manifest:
    names = list(scores)
    return Manifest(
        name="m", domains=[DomainEntry(name=n, weight=1 / len(names), influence_score=s) for n, s in scores.items()],
        influence=InfluenceBlock(gi=[[s] for s in scores.values()], gi_normalized=[[s] for s in scores.values()],
                                 domain_order=names, target_order=["t"]),
        solver={"name": "tikmix_d", "beta": 1.0, "reference": "uniform"},
        provenance=Provenance(model_path="/m", model_fingerprint="f", config_hash="h", run_id="r",
                              created_at="2026-11-23T00:00:00+00:00", influmix_version="0.1.0"))


def test_ranking_stability():
    prev = _manifest({"a": 1.0, "b": 0.5, "c": -1.0, "d": 0.0})
    assert ranking_stability({"a": 3.0, "b": 2.0, "c": -5.0, "d": 0.1}, prev) == 1.0
    assert ranking_stability({"a": -3.0, "b": -2.0, "c": 5.0, "d": 0.1}, prev) == -1.0
    assert ranking_stability({"a": 1.0}, prev) is None  # too few shared domains
    assert ranking_stability({"a": 1.0, "b": 2.0, "c": 3.0}, None) is None


def test_markdown_lists_every_domain():
    text = render_markdown(_manifest({"a": 1.0, "b": 0.5}), {"ranking_spearman_vs_previous": 0.5})
    assert "| a | 0.5000 |" in text and "| b | 0.5000 |" in text and "0.500" in text
