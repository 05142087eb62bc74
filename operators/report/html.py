"""report.html: one self-contained page a pretraining lead can look at instead of reading report.json.

Four figures (matplotlib, Agg backend, embedded as base64 PNG, so the file opens anywhere offline):
previous / reference vs published weights with the weight caps; domain scores with their bootstrap CIs
and the evidence-weighted score the solver used; every validation candidate's measured gain with its CI
and which one was published; planned epochs against the reuse cap. A header states what the published
gain means and how sure it is.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_BLUE, _GREY, _ORANGE, _GREEN = "#2f6db5", "#9aa3ad", "#e07b39", "#3a9d5d"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _weights_figure(domains: list[str], published: Mapping[str, float], reference: Mapping[str, float],
                    previous: Mapping[str, float | None], upper: Mapping[str, float], reference_label: str) -> str:
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(domains) + 1.4))
    y = list(range(len(domains)))
    has_prev = any(previous.get(d) is not None for d in domains)
    h = 0.27 if has_prev else 0.38
    ax.barh([i - h for i in y], [reference.get(d, 0) for d in domains], height=h, color=_GREY,
            label=reference_label)
    if has_prev:
        ax.barh(y, [previous.get(d) or 0 for d in domains], height=h, color=_ORANGE, label="previous manifest")
    ax.barh([i + (h if has_prev else 0) for i in y], [published.get(d, 0) for d in domains], height=h,
            color=_BLUE, label="published")
    for i, d in enumerate(domains):
        if d in upper and upper[d] < 1:
            ax.plot([upper[d]] * 2, [i - 0.45, i + 0.45], color="black", lw=1.2, ls=":")
    ax.plot([], [], color="black", ls=":", label="weight cap")
    ax.set_yticks(y, domains)
    ax.invert_yaxis()
    ax.set_xlabel("mixture weight")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Mixture: before and after")
    return _png(fig)


def _scores_figure(domains: list[str], used: Mapping[str, float], raw: Mapping[str, float],
                   ci: Mapping[str, list[float] | None]) -> str:
    fig, ax = plt.subplots(figsize=(7.5, 0.5 * len(domains) + 1.4))
    for i, d in enumerate(domains):
        lo_hi = ci.get(d)
        if lo_hi:
            ax.plot(lo_hi, [i, i], color=_GREY, lw=4, solid_capstyle="butt")
        if d in raw:
            ax.plot(raw[d], i, "o", mfc="white", mec=_GREY)
        ax.plot(used.get(d, 0.0), i, "o", color=_BLUE)
    ax.axvline(0, color="black", lw=0.8)
    ax.plot([], [], color=_GREY, lw=4, label="bootstrap CI of the measured score")
    ax.plot([], [], "o", mfc="white", mec=_GREY, label="measured")
    ax.plot([], [], "o", color=_BLUE, label="after evidence weighting (used by the solver)")
    ax.set_yticks(range(len(domains)), domains)
    ax.invert_yaxis()
    ax.set_xlabel("domain score (solver scale; > 0: training on it lowers target loss)")
    ax.legend(loc="best", fontsize=8)
    ax.set_title("Domain influence and how sure it is")
    return _png(fig)


def _validation_figure(candidates: Mapping[str, Mapping[str, Any]], published: str, steps: int) -> str:
    names = sorted(candidates, key=lambda n: candidates[n].get("gain", 0.0), reverse=True)
    fig, ax = plt.subplots(figsize=(7.5, 0.4 * len(names) + 1.4))
    for i, n in enumerate(names):
        c = candidates[n]
        colour = _GREEN if n == published else (_GREY if n == "reference" else _BLUE)
        lo, hi = c.get("ci", [c["gain"], c["gain"]])
        ax.plot([lo, hi], [i, i], color=colour, lw=3, alpha=0.6)
        ax.plot(c["gain"], i, "o", color=colour)
        if c.get("confirmed"):
            conf = c["confirmed"]
            ax.plot(conf["ci"], [i + 0.25] * 2, color=_ORANGE, lw=2)
            ax.plot(conf["gain"], i + 0.25, "D", color=_ORANGE, ms=5)
    if any(candidates[n].get("confirmed") for n in names):
        ax.plot([], [], "o", color=_BLUE, label="first round (chooses)")
        ax.plot([], [], "D", color=_ORANGE, label="finalists re-measured on fresh seeds (simultaneous CI)")
        ax.legend(loc="lower right", fontsize=8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(names)), [f"{n}  (published)" if n == published else n for n in names])
    ax.invert_yaxis()
    ax.set_xlabel(f"measured gain over the reference, nats of validation target loss ({steps}-step probes)")
    ax.set_title("Validation candidates")
    return _png(fig)


def _epochs_figure(domains: list[str], planned: Mapping[str, float], cap: float | None,
                   configured_cap: float | None) -> str:
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(domains) + 1.4))
    ax.barh(range(len(domains)), [planned.get(d, 0.0) for d in domains], color=_BLUE)
    if cap:
        ax.axvline(cap, color="black", ls=":", label=f"reuse cap ({cap:.3g} epochs)")
    if configured_cap and cap and abs(configured_cap - cap) > 1e-9:
        ax.axvline(configured_cap, color=_ORANGE, ls="--", label=f"configured cap ({configured_cap:g}), relaxed")
    ax.set_yticks(range(len(domains)), domains)
    ax.invert_yaxis()
    ax.set_xlabel("planned passes over each domain's unique tokens in the next stage")
    if cap:
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Repetition the next stage will see")
    return _png(fig)


def _table(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def gain_sentence(validation: Mapping[str, Any] | None) -> str:
    """What the published gain means, in one or two sentences (also used by report.md)."""
    if not validation:
        return "Validation was off: the published mixture is the solver's answer, not measured by training."
    pub = validation["published"]
    c = validation["candidates"][pub]
    steps = validation.get("steps")
    if pub == validation.get("reference"):
        return (f"No candidate beat the reference by the margin in {steps}-step probes on held-out validation "
                f"examples, so the reference mixture was kept.")
    confirmed = c.get("confirmed")
    probe = confirmed or c
    lo, hi = probe.get("ci", [float("nan")] * 2)
    finals = (validation.get("confirmation") or {}).get("finalists") or []
    where = ("on fresh seeds and held-back examples that did not choose it" if confirmed
             else "on the probes that also chose it (not selection-corrected)")
    if confirmed and len(finals) > 1:
        where += (f", with an interval simultaneous over the {len(finals)} finalists re-measured there "
                  f"({confirmed.get('confidence', 0.9):.1%})")
    text = (f"Published <b>{html.escape(pub)}</b>: in {steps}-step training probes from the checkpoint, measured "
            f"{where}, it lowered the validation target loss by {probe['gain']:.4f} nats against the reference "
            f"(CI [{lo:.4f}, {hi:.4f}]).")
    stage_gain = probe.get("stage_gain", c.get("stage_gain"))
    stage_ci = probe.get("stage_ci", c.get("stage_ci"))
    horizon = (validation.get("horizons") or {}).get("stage_steps")
    if stage_gain is not None and stage_ci:
        text += (f" Extrapolated to the whole next stage{f' ({horizon:.0f} steps)' if horizon else ''}: "
                 f"{stage_gain:.4f} nats (CI [{stage_ci[0]:.4f}, {stage_ci[1]:.4f}], which spans the horizon "
                 f"models).")
    else:
        text += " It is a short-horizon gain; the full stage's gain can be larger or smaller."
    return text


def render_html(report: Mapping[str, Any], manifest: Mapping[str, Any]) -> str:
    """The page, from report.json and manifest.json (as dicts)."""
    problem = report.get("problem", {})
    domains = list(problem.get("domains") or report.get("weights", {}))
    mdom = {d["name"]: d for d in manifest.get("domains", [])}
    validation = report.get("validation")
    budget = problem.get("budget", {})
    relaxed = budget.get("relaxed")
    evidence = problem.get("evidence", {})
    figures = [
        _weights_figure(domains, report.get("weights", {}), problem.get("reference_weights", {}),
                        {d: mdom.get(d, {}).get("previous_weight") for d in domains}, problem.get("upper", {}),
                        f"reference ({problem.get('reference', '')})"),
        _scores_figure(domains, report.get("domain_scores", {}), evidence.get("raw_scores", {}),
                       {d: mdom.get(d, {}).get("score_ci") for d in domains}),
    ]
    if validation:
        figures.append(_validation_figure(validation["candidates"], validation["published"],
                                          int(validation.get("steps", 0))))
    figures.append(_epochs_figure(domains, problem.get("planned_epochs", {}), budget.get("max_epochs"),
                                  relaxed["max_epochs_configured"] if relaxed else None))
    prov = manifest.get("provenance", {})
    rows = [("run", html.escape(str(prov.get("run_id", "")))),
            ("model", html.escape(f"{prov.get('model_path', '')}" + (f" (step {prov['checkpoint_step']})"
                                   if prov.get("checkpoint_step") is not None else ""))),
            ("published", html.escape(str(report.get("published", "")))),
            ("next-stage budget", html.escape(f"{budget.get('tokens_next_stage', 0):.4g} tokens "
                                              f"({budget.get('source', '')})"))]
    if relaxed:
        rows.append(("reuse cap relaxed", html.escape(f"{relaxed['reason']}; max_epochs "
                                                      f"{relaxed['max_epochs_configured']:g} → "
                                                      f"{relaxed['max_epochs_used']:.3g}")))
    if evidence.get("kept"):
        kept = ", ".join(f"{d} {max(v):.2f}" for d, v in evidence["kept"].items())
        rows.append(("evidence kept", html.escape(kept)))
    compute = report.get("cost") or {}
    if compute.get("total"):
        rows.append(("compute", html.escape(
            f"{compute['total']:.0f} training-step equivalents (featurize {compute.get('featurize', 0):.0f}, "
            f"probes {compute.get('probes', 0):.0f}); a {compute.get('grid_mixtures', '?')}-mixture grid of "
            f"full stages would cost {compute.get('grid', 0):.0f} (ratio {compute.get('ratio', 0):.2f})")))
    timings = report.get("timings_s", {})
    if timings:
        rows.append(("time", html.escape(", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))))
    weights_rows = "".join(
        f"<tr><td>{html.escape(d)}</td><td>{report['weights'].get(d, 0):.4f}</td>"
        f"<td>{_fmt_ci(mdom.get(d, {}).get('weight_ci'))}</td>"
        f"<td>{problem.get('planned_epochs', {}).get(d, 0):.2f}</td></tr>" for d in domains)
    ci_note = f"<p><small>Weight CI: {html.escape(report['weight_ci'])}.</small></p>\n" if report.get("weight_ci") else ""
    imgs = "".join(f'<img alt="figure" src="data:image/png;base64,{b}">' for b in figures)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>influmix refresh {html.escape(str(prov.get('run_id', '')))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 980px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.8em 0; }} th, td {{ padding: 3px 10px; text-align: left; }}
th {{ color: #555; font-weight: 600; }} tr:nth-child(even) {{ background: #f4f6f8; }}
img {{ display: block; margin: 1.2em 0; max-width: 100%; }} .gain {{ font-size: 1.05em; background: #eef5ee;
padding: 0.6em 0.9em; border-left: 4px solid {_GREEN}; }}
</style></head><body>
<h1>Mixture refresh <code>{html.escape(str(prov.get('run_id', '')))}</code></h1>
<p class="gain">{gain_sentence(validation)}</p>
{_table(rows)}
<table><tr><th>domain</th><th>weight</th><th>weight CI</th><th>planned epochs</th></tr>{weights_rows}</table>
{ci_note}{imgs}
</body></html>
"""


def _fmt_ci(ci: list[float] | None) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
