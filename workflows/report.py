"""Human-readable run report (report.md) next to report.json."""

from __future__ import annotations

import numpy as np

from operators.influence import spearman
from operators.manifest import Manifest


def ranking_stability(scores: dict[str, float], previous: Manifest | None) -> float | None:
    """Spearman of domain influence scores vs the previous refresh (TiKMiX rank invariance check)."""
    if previous is None:
        return None
    prev = {d.name: d.influence_score for d in previous.domains}
    common = [d for d in scores if d in prev]
    if len(common) < 3:
        return None
    rho = spearman(np.array([scores[d] for d in common]), np.array([prev[d] for d in common]))
    return None if np.isnan(rho) else float(rho)


def render_markdown(manifest: Manifest, report: dict) -> str:
    lines = [f"# Mixture refresh `{manifest.provenance.run_id}`", "",
             f"- model: `{manifest.provenance.model_path}` (step {manifest.provenance.checkpoint_step})",
             f"- solver: {manifest.solver.get('name')} (beta={manifest.solver.get('beta')}, "
             f"reference={manifest.solver.get('reference')})",
             f"- preconditioner: {manifest.influence.preconditioner}",
             f"- previous manifest: {manifest.provenance.previous_manifest_uri or 'none'}"]
    if report.get("ranking_spearman_vs_previous") is not None:
        lines.append(f"- influence ranking Spearman vs previous refresh: {report['ranking_spearman_vs_previous']:.3f}")
    lines += ["", "| domain | weight | previous | influence score | score CI | weight CI | examples |",
              "| --- | ---: | ---: | ---: | --- | --- | ---: |"]
    for d in manifest.domains:
        ci = f"[{d.score_ci[0]:.3f}, {d.score_ci[1]:.3f}]" if d.score_ci else ""
        wci = f"[{d.weight_ci[0]:.3f}, {d.weight_ci[1]:.3f}]" if d.weight_ci else ""
        prev = "" if d.previous_weight is None else f"{d.previous_weight:.4f}"
        lines.append(f"| {d.name} | {d.weight:.4f} | {prev} | {d.influence_score:.3f} | {ci} | {wci} | "
                     f"{d.n_examples} |")
    m = report.get("tikmix_m")
    if m:
        lines += ["", "## TiKMiX-D vs TiKMiX-M", "",
                  f"Regression CV Spearman: {m['regressor'].get('cv_spearman')}", "",
                  "| mixture | measured quality (−ΔL target) | predicted | linear influence objective |",
                  "| --- | ---: | ---: | ---: |"]
        for row in m["comparison"]:
            pred = "" if row["predicted"] is None else f"{row['predicted']:.4f}"
            lines.append(f"| {row['name']} | {row['measured_quality']:.4f} | {pred} | {row['linear_objective']:.3f} |")
    mates = report.get("mates")
    if mates:
        lines += ["", "## MATES selection", "", f"Pool {mates['pool_size']} examples; quotas {mates['quotas']}."]
    return "\n".join(lines) + "\n"
