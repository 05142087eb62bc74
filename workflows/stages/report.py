"""Human-readable run report (report.md) next to report.json."""

from __future__ import annotations

import numpy as np

from operators.influence.group import spearman
from operators.manifest.schema import Manifest


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


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "" if x is None else format(x, spec)


def _validation_lines(v: dict, domains: list[str]) -> list[str]:
    pub = v["candidates"][v["published"]]
    hz = v.get("horizons") or {}
    probe_label = hz.get("probe_label", f"probe-horizon gain ({v['steps']}-step probes)")
    shown = pub.get("confirmed") or pub
    where = (f" on fresh seeds and held-back examples ({shown['confidence']:.1%} interval, simultaneous over "
             f"{len((v.get('confirmation') or {}).get('finalists') or [1])} finalists)") if pub.get("confirmed") else ""
    verdict = (f"**improvement found**: published `{v['published']}`, {probe_label} {shown['gain']:+.4f} nats "
               f"[{shown['ci'][0]:+.4f}, {shown['ci'][1]:+.4f}] vs the reference{where}"
               if v["improvement_found"] else
               f"**NO IMPROVEMENT FOUND**: no candidate beat the reference by {v['margin']} standard errors; "
               f"published the reference (best measured: `{v['best']}`)")
    lines = ["", "## Validation before publishing", "", verdict, ""]
    if hz and "stage_gain" in pub:
        conf = pub.get("confirmed") or {}
        sg, sci = conf.get("stage_gain", pub["stage_gain"]), conf.get("stage_ci", pub["stage_ci"])
        lines += [f"- {hz['stage_label']}: {sg:+.4f} nats [{sci[0]:+.4f}, {sci[1]:+.4f}]"
                  + (" (fresh confirmation seeds)" if conf else "")
                  + (f"; {hz['stage_model']}" if hz.get("stage_model") else ""),
                  f"- {probe_label}: {shown['gain']:+.4f} nats" + (
                      f" (first round, the data that chose it: {pub['gain']:+.4f})" if pub.get("confirmed") else ""), ""]
    lines += [f"{len(v['seeds'])} seeds × {v['steps']} steps × batch {v['batch_size']} from the checkpoint; "
              f"target loss on the held-out `{v['split']}` split ({v['reference_examples']} examples), never used "
              f"for influence. Paired noise σ {v['seed_std']:.4f} nats (candidates × seeds residual; each seed feeds "
              f"every candidate the same examples per domain); gains are vs the reference, "
              f"{int(v['confidence'] * 100)}% t-intervals. Several targets: {v.get('target_balance', 'n/a')}.", ""]
    rounds = v.get("rounds")
    if rounds:
        lines += [f"Candidates: {rounds['first']} in the first round (solvers, line points, baselines, exploration), "
                  f"{rounds['second']} in the second (the multi-step answer and the surrogate's proposals: "
                  f"{(v.get('surrogate') or {}).get('reason', '')}); {v.get('probes', 0)} probes in all.", ""]
    ex = v.get("examples")
    if ex:
        lines += [f"Validation examples: {ex['select']} choose, {ex['confirm']} confirm ({ex['halves']}); drawn with "
                  f"seed {ex['draw_seed']} (rotate: {ex['rotate']}).", ""]
    ms = v.get("multi_step") or {}
    if ms.get("fitted"):
        first, later = ms["first_order_scores"], ms["scores"]

        def top(sc: dict) -> str:
            return ", ".join(f"{d} {x:+.2f}" for d, x in sorted(sc.items(), key=lambda kv: -kv[1])[:3])

        lines += [f"Multi-step influence (domain effects at the {ms['horizon']} horizon, read off {ms['mixtures']} "
                  f"probed mixtures; rank correlation with first order {ms['rank_correlation_with_first_order']:+.2f}): "
                  f"top domains {top(later)} (first order: {top(first)}).", ""]
    conf = v.get("confirmation")
    if conf:
        rows = v["candidates"]
        finals = conf.get("finalists") or [c for c in conf["candidates"] if c != "reference"]
        measured = ", ".join(f"`{c}` {rows[c]['confirmed']['gain']:+.4f} (pooled with the first round "
                             f"{rows[c]['confirmed']['pooled_gain']:+.4f})" if rows[c].get("confirmed", {}).get("pooled_gain")
                             is not None else f"`{c}`" for c in finals)
        gate = conf.get("gate") or {}
        lines += [f"Confirmation on fresh seeds {conf['seeds']} and the {conf.get('examples')} held-back examples: "
                  f"finalists ({conf.get('finalist_rule', 'the first-round best')}) {measured}. "
                  + (f"Gate: `{gate['candidate']}` (first-round best) "
                     f"{'passed' if gate.get('passed') else 'did not pass'}"
                     + (f", interval [{gate['ci'][0]:+.4f}, {gate['ci'][1]:+.4f}]" if gate.get("ci") else "") + "; "
                     if gate else "")
                  + f"published `{conf['published']}`. Rule: {conf['rule']}.", ""]
    stage_col = f"stage-horizon gain ({hz['stage_steps']:.0f} steps, extrapolated)" if hz else "stage-horizon gain"
    lines += [f"| candidate | source | mean ΔL | {probe_label} | CI | z | {stage_col} | stage CI | "
              "predicted (score units) | max epochs |",
              "| --- | --- | ---: | ---: | --- | ---: | ---: | --- | ---: | ---: |"]
    for name, row in sorted(v["candidates"].items(), key=lambda kv: kv[1]["mean_delta"]):
        mark = " **(published)**" if name == v["published"] else ""
        epochs = max(row.get("planned_epochs", {}).values(), default=0.0)
        sci = row.get("stage_ci")
        stage = (f"{row['stage_gain']:+.4f} | [{sci[0]:+.4f}, {sci[1]:+.4f}]" if sci else " | ")
        lines.append(f"| {name}{mark} | {row.get('source', '')} | {row['mean_delta']:.4f} | {row['gain']:+.4f} | "
                     f"[{row['ci'][0]:+.4f}, {row['ci'][1]:+.4f}] | {row['z']:+.1f} | {stage} | "
                     f"{row.get('predicted_score_gain', 0.0):+.3f} | {epochs:.2f} |")
    pvm = v.get("predicted_vs_measured", {})
    if pvm.get("pearson") is not None:
        lines += ["", f"Influence-predicted vs measured gains over {pvm['n']} candidates: Pearson "
                      f"{pvm['pearson']:.2f}, Spearman {pvm['spearman']:.2f}."]
    if v.get("aliases"):
        lines += ["", "Identical candidates measured once: "
                  + ", ".join(f"`{a}` = `{b}`" for a, b in v["aliases"].items())]
    return lines


def _cost_lines(cost: dict) -> list[str]:
    lines = ["", "## Compute (training-step equivalents)", "",
             f"Refresh: {cost['total']:.0f} steps of batch {cost['batch_size']} (featurize {cost['featurize']:.0f}, "
             f"probes {cost['probes']:.0f})."]
    if cost.get("grid"):
        lines.append(f"A RegMix-style grid training the same {cost['grid_mixtures']} mixtures for the whole stage "
                     f"({cost['stage_steps']:.0f} steps each, one seed): {cost['grid']:.0f} steps; the refresh costs "
                     f"{cost['ratio']:.2f} of it.")
    return lines


def _mixtures_table(title: str, rows: dict, domains: list[str]) -> list[str]:
    lines = ["", f"## {title}", "", "| mixture | " + " | ".join(domains) + " |",
             "| --- |" + " ---: |" * len(domains)]
    for name, row in rows.items():
        w = row["weights"]
        lines.append(f"| {name} | " + " | ".join(f"{w.get(d, 0.0):.3f}" for d in domains) + " |")
    return lines


def render_markdown(manifest: Manifest, report: dict) -> str:
    solver = manifest.solver
    budget = manifest.budget or {}
    lines = [f"# Mixture refresh `{manifest.provenance.run_id}`", "",
             f"- model: `{manifest.provenance.model_path}` (step {manifest.provenance.checkpoint_step})",
             f"- solver: {solver.get('name')} (prior={solver.get('prior')}, reference={solver.get('reference')}); "
             f"published: **{report.get('published', solver.get('name'))}**",
             f"- preconditioner: {manifest.influence.preconditioner}; target normalisation: "
             f"{report.get('problem', {}).get('normalize', '')}",
             f"- previous manifest: {manifest.provenance.previous_manifest_uri or 'none'}"]
    ckpts = report.get("checkpoints", {})
    if ckpts.get("average", 1) > 1:
        lines.append(f"- influence averaged over {ckpts['average']} checkpoints: "
                     + ", ".join(f"`{c['uri']}` (step {c['step']})" for c in ckpts["checkpoints"]))
    probe_opt = (report.get("validation") or {}).get("probe_optimizer")
    if probe_opt:
        groups = "; ".join(f"lr {g['lr']:.3g}, weight decay {g['weight_decay']:g}" for g in probe_opt["groups"])
        lines.append(f"- probes continued: {probe_opt['moments']}; hyperparameters from {probe_opt['hyperparameters']}"
                     f" ({groups})" + (f"; {probe_opt['reason']}" if probe_opt.get("reason") else ""))
    if budget:
        lines.append(f"- next-stage budget: {budget.get('tokens_next_stage', 0):.4g} tokens ({budget.get('source')}); "
                     f"reuse cap {budget.get('max_epochs')} epochs")
        earlier = budget.get("consumed_by_earlier_stages") or {}
        if earlier.get("stages"):
            lines.append(f"- earlier stages: {len(earlier['stages'])} previous manifest(s) drew "
                         f"{sum(earlier['tokens'].values()):.4g} tokens; planned epochs and reuse caps include them")
        if budget.get("relaxed"):
            r = budget["relaxed"]
            lines.append(f"- **reuse cap relaxed**: {r['reason']}; max_epochs {r['max_epochs_configured']:g} -> "
                         f"{r['max_epochs_used']:.3g} for every domain")
    evidence = report.get("problem", {}).get("evidence", {})
    if evidence.get("kept"):
        kept = ", ".join(f"{d} {max(row):.2f}" for d, row in evidence["kept"].items())
        lines.append(f"- evidence: each domain's influence pulled toward the pooled mean by its standard error "
                     f"(empirical Bayes); share of its own deviation kept: {kept}")
    elif evidence:
        lines.append(f"- evidence: shrinkage {evidence.get('shrinkage')}")
    if report.get("ranking_spearman_vs_previous") is not None:
        lines.append(f"- influence ranking Spearman vs previous refresh: {report['ranking_spearman_vs_previous']:.3f}")
    lines += ["", "| domain | weight | previous | influence score | score CI | weight CI | examples | "
                  "unique tokens | planned epochs |",
              "| --- | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: |"]
    for d in manifest.domains:
        ci = f"[{d.score_ci[0]:.3f}, {d.score_ci[1]:.3f}]" if d.score_ci else ""
        wci = f"[{d.weight_ci[0]:.3f}, {d.weight_ci[1]:.3f}]" if d.weight_ci else ""
        prev = "" if d.previous_weight is None else f"{d.previous_weight:.4f}"
        lines.append(f"| {d.name} | {d.weight:.4f} | {prev} | {d.influence_score:.3f} | {ci} | {wci} | "
                     f"{d.n_examples} | {_fmt(d.tokens_available, ',')} | {_fmt(d.planned_epochs, '.2f')} |")
    if report.get("weight_ci"):
        lines += ["", f"Weight CI: {report['weight_ci']}."]
    domains = [d.name for d in manifest.domains]
    if report.get("validation"):
        lines += _validation_lines(report["validation"], domains)
    if report.get("cost"):
        lines += _cost_lines(report["cost"])
    if report.get("solvers"):
        lines += _mixtures_table("Solvers", report["solvers"], domains)
    if report.get("baselines"):
        lines += _mixtures_table("Baselines (also measured above when validation is on)", report["baselines"],
                                 domains)
    m = report.get("solvers", {}).get("tikmix_m")
    if m and "fell_back" in m:
        reg, noise, nan = m.get("regressor", {}), m.get("label_noise", {}), float("nan")
        lines += ["", "## TiKMiX-M (local search around TiKMiX-D)", "",
                  f"- {len(m['labels'])} candidates × {len(m['seeds'])} seeds × {m['steps']} steps on the "
                  f"{m['split']} split; label std {noise.get('label_std', nan):.4f}, label noise "
                  f"{noise.get('label_noise_std', nan):.4f} (seed std {noise.get('seed_std', nan):.4f})",
                  f"- regression leave-one-out RMSE {reg.get('cv_rmse', nan):.4f} vs label std "
                  f"{reg.get('label_std', nan):.4f} (R² {reg.get('cv_r2', nan):.3f})",
                  f"- {'fell back to TiKMiX-D' if m['fell_back'] else 'published its search result'}: {m['reason']}"]
    mates = report.get("mates")
    if mates:
        lines += ["", "## MATES selection", "", f"Pool {mates['pool_size']} examples; quotas {mates['quotas']}; "
                  f"selection: {mates.get('selection', 'influence model')}."]
    return "\n".join(lines) + "\n"
