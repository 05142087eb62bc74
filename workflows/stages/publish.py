"""Write a mixture manifest (JSON, YAML, trainer formats) and then move the `latest` pointer."""

from __future__ import annotations

import json
import logging
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from operators.io import storage
from operators.errors import ConfigError, StorageError
from operators.manifest.formats import render_all
from operators.manifest.schema import (
    DomainEntry,
    InfluenceBlock,
    Manifest,
    Provenance,
    Selection,
    TargetEntry,
)
from operators.mixture.cost import grid_cost, refresh_cost
from operators.model.checkpoints import parse_step
from operators.influence.group import combine_targets, normalize_per_target
from operators.influence.shrinkage import shrink
from operators.report.html import render_html
from workflows.run.integrity import skipped_examples
from workflows.solvers.base import MixtureProblem
from workflows.stages.aggregate import InfluenceResult
from workflows.stages.base import RunContext, Stage, published_weights
from workflows.stages.report import ranking_stability, render_markdown
from workflows.config import RunConfig
from workflows.run.faults import maybe_inject_fault
from workflows.stages.problem import latest_pointer_uri, manifests_root
from workflows.run.plan import read_recorded_plan

VERSION = "0.1.0"
log = logging.getLogger(__name__)


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _ci(boot: dict, key: str, i: int) -> tuple[float, float] | None:
    lo, hi = boot.get(f"{key}_low"), boot.get(f"{key}_high")
    if lo is None or hi is None:
        return None
    return float(lo[i]), float(hi[i])


def published_weight_ci(bootstrap: dict, published: str, primary: str, reference: np.ndarray,
                        proposals: dict | None = None, domains: list[str] | None = None
                        ) -> list[tuple[float, float] | None]:
    """Bootstrap CIs of the mixture that is published, not of whichever solver was bootstrapped: the
    primary solver's own CIs when it is published; for ``line:t`` (a fixed blend (1−t)·reference +
    t·primary) the same blend of its CI ends; for a surrogate proposal, where it lands when the first
    round is resampled (``proposals``: validation ``surrogate.weight_ci.proposals``, keyed by
    ``domains``); none for fixed designs and mixtures that were not bootstrapped."""
    k = len(reference)
    if proposals and published in proposals and domains:
        row = proposals[published]
        return [(float(row["low"][d]), float(row["high"][d])) for d in domains]
    if "extra_low" not in bootstrap:
        return [None] * k
    lo, hi = np.asarray(bootstrap["extra_low"]), np.asarray(bootstrap["extra_high"])
    if published == primary:
        return [(float(a), float(b)) for a, b in zip(lo, hi)]
    if published.startswith("line:"):
        t = float(published.split(":", 1)[1])
        return [(float((1 - t) * r + t * a), float((1 - t) * r + t * b)) for r, a, b in zip(reference, lo, hi)]
    return [None] * k


def build_manifest(cfg: RunConfig, infl: InfluenceResult, weights: np.ndarray, *, model_uri: str,
                   model_fingerprint: str, checkpoint_step: int | None, projector: dict, solver: dict,
                   previous_uri: str | None, previous_weights: dict[str, float] | None,
                   tokens_available: dict[str, int] | None, selection: Selection | None = None,
                   budget: dict | None = None, planned_epochs: dict[str, float] | None = None,
                   validation: dict | None = None,
                   weight_ci: list[tuple[float, float] | None] | None = None) -> Manifest:
    """``weight_ci``: CIs of the PUBLISHED weights (:func:`published_weight_ci`); default: the primary
    solver's bootstrap (right when it is the one published)."""
    domains = []
    for i, name in enumerate(infl.domains):
        domains.append(DomainEntry(
            name=name, weight=float(weights[i]),
            previous_weight=None if previous_weights is None else previous_weights.get(name),
            influence_score=float(infl.scores[i]), score_ci=_ci(infl.bootstrap, "score", i),
            weight_ci=_ci(infl.bootstrap, "extra", i) if weight_ci is None else weight_ci[i], n_examples=infl.counts[name], n_tokens=infl.tokens[name],
            tokens_available=None if tokens_available is None else tokens_available.get(name),
            planned_epochs=None if planned_epochs is None else planned_epochs.get(name),
            data_prefix=cfg.mixture.data_prefixes.get(name),
        ))
    targets = [TargetEntry(name=t, weight=float(w), n_examples=infl.target_counts.get(t, 0))
               for t, w in zip(infl.targets, infl.target_weights)]
    influence = InfluenceBlock(gi=infl.gi.tolist(), gi_normalized=infl.gi_normalized.tolist(),
                               domain_order=list(infl.domains), target_order=list(infl.targets),
                               preconditioner=cfg.influence.preconditioner,
                               preconditioner_params=infl.preconditioner)
    provenance = Provenance(
        model_path=model_uri, model_fingerprint=model_fingerprint, checkpoint_step=checkpoint_step,
        config_hash=cfg.config_hash(), run_id=cfg.resolved_run_id(),
        created_at=datetime.now(timezone.utc).isoformat(), influmix_version=VERSION, projector=projector,
        git_commit=_git_commit(), previous_manifest_uri=previous_uri,
    )
    return Manifest(name=cfg.name, domains=domains, targets=targets, influence=influence, solver=solver,
                    budget=budget or {}, validation=validation or {}, selection=selection,
                    provenance=provenance)


def manifest_dir(cfg: RunConfig) -> str:
    return storage.join(manifests_root(cfg), cfg.resolved_run_id())


def parse_pointer(data: bytes, uri: str) -> dict:
    """A `latest.json` pointer; ConfigError naming the file when it is unreadable."""
    try:
        pointer = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"latest pointer {uri} is not valid JSON: {exc}") from None
    if not isinstance(pointer, dict) or not isinstance(pointer.get("manifest_uri"), str):
        raise ConfigError(f"latest pointer {uri}: field 'manifest_uri' is missing")
    return pointer


def pointer_order(pointer: dict) -> tuple[str, str]:
    """Total order of published runs: (run start time, run id). Pre-1.1 pointers sort first."""
    return str(pointer.get("started_at", "")), str(pointer.get("run_id", ""))


def move_latest(uri: str, pointer: dict, spec: storage.StorageSpec, attempts: int = 20) -> bool:
    """Move the `latest` pointer to `pointer` only forward: compare-and-swap against the version read, and
    only if `pointer` orders after the current one. Returns False when a newer run already holds it."""
    for _ in range(attempts):
        found = storage.read_versioned(uri, spec)
        if found is None:
            doc = {**pointer, "sequence": 1}
            if storage.put_if_absent(uri, _pointer_bytes(doc), spec):
                return True
            continue
        current = parse_pointer(found[0], uri)
        if pointer_order(current) >= pointer_order(pointer):
            log.warning("latest pointer %s stays at run %s (started %s): run %s started earlier (%s)", uri,
                        current.get("run_id"), current.get("started_at"), pointer["run_id"],
                        pointer["started_at"])
            return False
        doc = {**pointer, "sequence": int(current.get("sequence", 0)) + 1}
        if storage.put_if_match(uri, _pointer_bytes(doc), found[1], spec):
            return True
    raise StorageError(f"latest pointer {uri}: too many concurrent updates; rerun to publish")


def _pointer_bytes(doc: dict) -> bytes:
    return (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode()


def publish(cfg: RunConfig, manifest: Manifest, run_root: str, lease=None) -> dict[str, str]:
    """Write all manifest files, then `_SUCCESS`, then move the `latest` pointer forward (each one atomic
    write). `lease`, when given, must still be held before anything is written."""
    if lease is not None:
        lease.check()
    out_dir = manifest_dir(cfg)
    written: dict[str, str] = {}
    for filename, data in render_all(manifest, cfg.mixture.data_prefixes or None).items():
        uri = storage.join(out_dir, filename)
        storage.write_bytes_atomic(uri, data, cfg.storage)
        written[filename] = uri
    maybe_inject_fault("publish")
    storage.write_json_atomic(storage.join(run_root, "_SUCCESS"),
                              {"manifest_uri": written["manifest.json"], "run_id": cfg.resolved_run_id()},
                              cfg.storage)
    plan = read_recorded_plan(run_root, cfg.storage) or {}
    moved = move_latest(latest_pointer_uri(cfg), {
        "run_id": cfg.resolved_run_id(), "manifest_uri": written["manifest.json"], "manifest_dir": out_dir,
        "created_at": manifest.provenance.created_at,
        "started_at": plan.get("started_at", manifest.provenance.created_at),
    }, cfg.storage)
    if moved:
        written["latest"] = latest_pointer_uri(cfg)
    return written


def _surrogate_ci(validation: dict | None) -> dict:
    """Validation's ``surrogate.weight_ci`` section ({} when absent)."""
    return ((validation or {}).get("surrogate") or {}).get("weight_ci") or {}


def weight_ci_method(published: str, primary: str, validation: dict | None, has_ci: bool) -> str:
    """One line for the report: where the published weights' intervals come from, or why there are none."""
    if published == primary:
        return "bootstrap of the primary solver over examples" if has_ci else "none (influence.bootstrap < 2)"
    if published.startswith("line:"):
        return f"the primary solver's bootstrap interval, blended like `{published}`" if has_ci else "none"
    ci = _surrogate_ci(validation)
    if published in (ci.get("proposals") or {}):
        return (f"where this surrogate proposal lands when the first round is resampled (seeds × examples): "
                f"{ci['replicates']} of {ci['of']} refits proposed, {ci['confidence']:.0%} percentile interval")
    if published.startswith("explore:surrogate"):
        return "none: the surrogate's refits on resampled first rounds did not propose (or were turned off)"
    return (f"none: `{published}` is a fixed design (not estimated from data); how sure its gain is stands "
            "in the validation section")


def _validation_summary(validation: dict | None) -> dict:
    if not validation:
        return {"enabled": False}
    pub = validation["candidates"][validation["published"]]
    shown = pub.get("confirmed") or pub  # fresh seeds and examples when confirmed: not the data that chose it
    out = {"enabled": True, "published": validation["published"], "best": validation["best"],
           "improvement_found": validation["improvement_found"], "gain_nats": shown["gain"],
           "gain_ci": shown["ci"], "gain_data": "confirmation" if pub.get("confirmed") else "first round",
           "first_round_gain_nats": pub["gain"], "seed_std": validation["seed_std"], "split": validation["split"]}
    horizons = validation.get("horizons")
    if horizons and "stage_gain" in pub:
        confirmed = pub.get("confirmed") or {}
        out.update({"gain_horizon": horizons["probe_label"],
                    "stage_gain_nats": confirmed.get("stage_gain", pub["stage_gain"]),
                    "stage_gain_ci": confirmed.get("stage_ci", pub["stage_ci"]),
                    "stage_gain_horizon": horizons["stage_label"]})
    return out


def cost_report(cfg: RunConfig, infl: InfluenceResult, validation: dict | None, solved: dict) -> dict:
    """The refresh's cost in training-step equivalents beside a RegMix-style grid (operators/mixture/cost.py):
    the grid trains as many mixtures as validation measured, each for the whole stage, one seed each."""
    spec = cfg.mixture.validation
    featurized = int(sum(infl.counts.values()) + sum(infl.target_counts.values()))
    v = validation or {}
    probe_steps, evals = int(v.get("probe_steps_total", 0)), int(v.get("reference_evals", 0))
    examples = int(v.get("reference_examples", 0))
    if "reference_example_evals" in v:  # each probe scored only on its round's examples
        evals, examples = int(v["reference_example_evals"]), 1
    m = getattr(solved.get("tikmix_m"), "report", None) or {}
    if m.get("labels"):
        probe_steps += (len(m["labels"]) * len(m["seeds"]) + 2 * len((m.get("confirmation") or {}).get("seeds", [])))\
            * int(m["steps"])
    out = refresh_cost(featurized, spec.batch_size, probe_steps, evals, examples)
    horizon = (v.get("horizons") or {}).get("stage_steps")
    if horizon:
        n = len(v.get("candidates", {}))
        out.update({"grid_mixtures": n, "stage_steps": horizon, "grid": grid_cost(n, horizon),
                    "ratio": round(out["total"] / grid_cost(n, horizon), 3) if n else None})
    return out


def problem_report(problem: MixtureProblem, weights: np.ndarray) -> dict:
    b = problem.budget
    return {"domains": problem.domains, "targets": problem.targets, "normalize": problem.normalize,
            "prior": problem.prior_kind, "reference": problem.reference_kind,
            "reference_weights": dict(zip(problem.domains, problem.reference.round(6).tolist())),
            "lower": dict(zip(problem.domains, problem.lower.tolist())),
            "upper": dict(zip(problem.domains, problem.upper.tolist())),
            "budget": {"tokens_next_stage": b.tokens_next_stage, "source": b.source, "max_epochs": b.max_epochs,
                       "repetition_scale": b.repetition_scale,
                       "tokens_available": dict(zip(problem.domains, b.tokens_available.tolist())),
                       "relaxed": problem.info.get("budget_relaxed"),
                       "consumed_by_earlier_stages": problem.info.get("consumed_by_earlier_stages")},
            "planned_epochs": problem.epochs(weights), "evidence": evidence_report(problem)}


def evidence_report(problem: MixtureProblem) -> dict:
    """How much of each domain's measured influence the solver believed (operators/influence/shrinkage.py)."""
    if problem.gi_se is None or problem.shrinkage == "none":
        return {"shrinkage": "none" if problem.shrinkage == "none" else "none (no bootstrap standard errors)"}
    _, info = shrink(problem.gi, problem.gi_se)
    out = {"shrinkage": problem.shrinkage, "targets": problem.targets,
           "gi_se": {d: row for d, row in zip(problem.domains, problem.gi_se.tolist())},
           "raw_scores": dict(zip(problem.domains, combine_targets(
               normalize_per_target(problem.gi, problem.normalize), problem.target_weights).tolist()))}
    if info.get("applied"):
        out.update({"kept": {d: row for d, row in zip(problem.domains, info["factor"])},
                    "between_domain_sd": info["tau"], "pooled_mean": info["pooled_mean"]})
    return out


def _weights_table(results: dict, order: list[str]) -> dict:
    return {n: {**r.report, "weights": dict(zip(order, r.weights.tolist()))} for n, r in results.items()}


class PublishStage(Stage):
    """report.json and report.md, the manifest in every trainer format, ``_SUCCESS``, then the ``latest``
    pointer (only forward)."""

    name = "publish"

    def run(self, ctx: RunContext) -> None:
        cfg, problem, infl = ctx.cfg, ctx.problem, ctx.influence
        order = problem.domains
        weights, source = published_weights(ctx)
        primary = cfg.mixture.solver
        report = ctx.report
        report.update({"solvers": _weights_table(ctx.solved, order), "baselines": _weights_table(ctx.baselines, order),
                       "skipped_examples": skipped_examples(cfg, ctx.checkpoints.newest)})
        if ctx.validation is not None:
            report["validation"] = {k: v for k, v in ctx.validation.items() if k != "published_weights"}
        report["problem"] = problem_report(problem, weights)
        report["cost"] = cost_report(cfg, infl, ctx.validation, ctx.solved)
        report["aggregation"] = infl.reuse
        report["checkpoints"] = ctx.checkpoints.describe()
        if ctx.preflight:
            report["preflight"] = ctx.preflight
        solver_info = {"name": primary, "published": source, "prior": problem.prior_kind,
                       "reference": problem.reference_kind, **ctx.solved[primary].report}
        featurizer = ctx.featurizer
        manifest = build_manifest(
            cfg, infl, weights, model_uri=ctx.model_uri, model_fingerprint=featurizer.get("model", ""),
            checkpoint_step=parse_step(ctx.model_uri), projector=featurizer.get("featurizer", {}),
            solver=solver_info, previous_uri=ctx.previous_uri, previous_weights=problem.previous_weights,
            tokens_available=problem.info["tokens_available"], selection=ctx.selection,
            budget=report["problem"]["budget"], planned_epochs=report["problem"]["planned_epochs"],
            validation=_validation_summary(report.get("validation")),
            weight_ci=published_weight_ci(infl.bootstrap, source, primary, problem.reference,
                                          _surrogate_ci(ctx.validation).get("proposals"), order))
        report["weight_ci"] = weight_ci_method(source, primary, ctx.validation,
                                               any(d.weight_ci for d in manifest.domains))
        final = dict(zip(order, weights.tolist()))
        scores = dict(zip(order, problem.scores.tolist()))
        t = ctx.timings
        report.update({"timings_s": {"featurize": round(t.get("featurize", 0.0), 2),
                                     "aggregate_and_solve": round(t.get("aggregate", 0.0) + t.get("solve", 0.0), 2),
                                     "validate": round(t.get("validate", 0.0), 2),
                                     "total": round(time.monotonic() - ctx.started, 2)},
                       "published": source, "weights": final, "domain_scores": scores,
                       "ranking_spearman_vs_previous": ranking_stability(scores, ctx.previous)})
        storage.write_json_atomic(storage.join(ctx.plan.root, "report.json"), report, cfg.storage)
        storage.write_text_atomic(storage.join(ctx.plan.root, "report.md"), render_markdown(manifest, report),
                                  cfg.storage)
        storage.write_text_atomic(storage.join(ctx.plan.root, "report.html"),
                                  render_html(report, manifest.model_dump(mode="json")), cfg.storage)
        ctx.outputs = publish(cfg, manifest, ctx.plan.root, ctx.lease)  # manifest files, _SUCCESS, then latest
        if ctx.metrics is not None:
            ctx.metrics.weights(final)
        log.info("published %s (%s): %s", ctx.outputs["manifest.json"], source,
                 {d: round(w, 4) for d, w in final.items()})

