"""The main workflow: plan → featurize on Ray → group influence → mixture → manifest."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from operators import storage
from operators.mixture import objective
from workflows.aggregate import InfluenceResult, aggregate_influence, domain_order
from workflows.config import BUILTIN_MODEL, RunConfig, dump_config
from workflows.featurize_stage import run_featurize
from workflows.integrity import check_unique_ids, skipped_examples
from workflows.lease import run_lease
from workflows.mixture_stage import MixtureProblem, build_problem, load_previous
from workflows.pins import pin_run
from workflows.plan import Plan, build_plan, check_or_record_plan
from workflows.publish import build_manifest, manifest_dir, publish
from workflows.report import ranking_stability, render_markdown

log = logging.getLogger(__name__)


@dataclass
class RefreshResult:
    run_id: str
    run_root: str
    manifest_uri: str
    weights: dict[str, float]
    outputs: dict[str, str]
    influence: InfluenceResult = field(repr=False)
    report: dict = field(default_factory=dict, repr=False)


def resolve_model_uri(cfg: RunConfig) -> str:
    """checkpoint_root (latest step) > builtin tiny model (built once, cached) > model.path."""
    if cfg.model.checkpoint_root:
        from operators.model_io import find_latest_checkpoint

        return find_latest_checkpoint(cfg.model.checkpoint_root, cfg.storage)
    if cfg.model.path == BUILTIN_MODEL:
        from workflows.assets import ensure_default_checkpoint

        return ensure_default_checkpoint(cfg.model.cache_dir, cfg.model.tiny)
    return cfg.model.path


def _check_storage(cfg: RunConfig) -> None:
    for uri in [cfg.output_uri, *cfg.corpus.paths]:
        if storage.is_remote(uri):
            storage.check_reachable(uri, cfg.storage)


def prepare_run(cfg: RunConfig, pins: dict | None = None) -> tuple[Plan, str]:
    _check_storage(cfg)
    plan = build_plan(cfg)  # cheap input validation first: missing shards fail before any model work
    model_uri = resolve_model_uri(cfg)
    resumed = check_or_record_plan(plan, cfg.storage, pins)
    if not resumed:
        storage.write_text_atomic(storage.join(plan.root, "config.yaml"), dump_config(cfg), cfg.storage)
    log.info("run %s (%s) at %s; model %s", plan.run_id, "resuming" if resumed else "new", plan.root, model_uri)
    return plan, model_uri


def _solver_info(problem: MixtureProblem, scores: np.ndarray, weights: np.ndarray, name: str) -> dict:
    return {
        "name": name, "beta": problem.beta, "reference": problem.reference_kind,
        "w_ref": dict(zip(problem.domains, problem.w_ref.round(8).tolist())),
        "lower": dict(zip(problem.domains, problem.lower.tolist())),
        "upper": dict(zip(problem.domains, problem.upper.tolist())),
        "objective": float(objective(weights, scores, problem.w_ref, problem.beta)),
    }


def run_mixture_refresh(cfg: RunConfig) -> RefreshResult:
    """Run (or resume) one mixture refresh end to end and publish its manifest."""
    t0 = time.monotonic()
    _check_storage(cfg)
    cfg, pins = pin_run(cfg)  # checkpoint + previous manifest, resolved once per run (workflows/pins.py)
    plan, model_uri = prepare_run(cfg, pins)
    finished = _finished(cfg, plan)
    if finished is not None:
        return finished
    with run_lease(cfg, plan) as lease:  # one driver per run id; a waiter finds the result when done
        finished = _finished(cfg, plan)
        if finished is not None:
            return finished
        return _run_leased(cfg, plan, model_uri, pins, lease, t0)


def _run_leased(cfg: RunConfig, plan: Plan, model_uri: str, pins: dict, lease, t0: float) -> RefreshResult:
    from cluster.metrics import DriverMetrics
    from cluster.runtime import init_ray

    started_ray = init_ray(cfg.cluster)
    try:
        metrics = DriverMetrics(plan.run_id)
        featurizer = run_featurize(cfg, plan, model_uri, metrics)
        check_unique_ids(cfg, plan)
        t_feat = time.monotonic()
        previous_uri, previous = load_previous(cfg, pins["previous_manifest"])
        order, tokens = domain_order(cfg, plan)
        problem = build_problem(cfg, order, tokens, previous)
        layout = featurizer.get("featurizer", {}).get("kfac_layout")
        infl = aggregate_influence(cfg, plan, order, layout, extra=problem.solve)
        weights = problem.solve(infl.scores)
        solver = _solver_info(problem, infl.scores, weights, "tikmix_d")
        report: dict = {"tikmix_d": dict(zip(order, weights.tolist())),
                        "skipped_examples": skipped_examples(cfg, plan)}
        if cfg.mixture.solver == "tikmix_m" or cfg.mixture.tikmix_m.enabled:
            from cluster.runtime import worker_layout
            from workflows.tikmix_m_stage import run_tikmix_m

            m_weights, m_report = run_tikmix_m(cfg, plan, model_uri, infl, problem, worker_layout(cfg.cluster))
            report["tikmix_m"] = m_report
            if cfg.mixture.solver == "tikmix_m":
                weights = m_weights
                solver = {**_solver_info(problem, infl.scores, weights, "tikmix_m"),
                          "regression": m_report.get("regressor")}
        selection = None
        if cfg.mates.enabled:
            from workflows.mates_stage import run_mates

            selection, report["mates"] = run_mates(cfg, plan, model_uri, dict(zip(order, weights.tolist())),
                                                   manifest_dir(cfg))
        manifest = build_manifest(
            cfg, infl, weights, model_uri=model_uri, model_fingerprint=featurizer.get("model", ""),
            checkpoint_step=_step_of(model_uri), projector=featurizer.get("featurizer", {}), solver=solver,
            previous_uri=previous_uri, previous_weights=problem.previous_weights,
            tokens_available=problem.info.get("tokens_available"), selection=selection)
        final = dict(zip(order, weights.tolist()))
        scores = dict(zip(order, infl.scores.tolist()))
        report.update({"timings_s": {"featurize": round(t_feat - t0, 2), "total": round(time.monotonic() - t0, 2)},
                       "weights": final, "domain_scores": scores,
                       "ranking_spearman_vs_previous": ranking_stability(scores, previous)})
        storage.write_json_atomic(storage.join(plan.root, "report.json"), report, cfg.storage)
        storage.write_text_atomic(storage.join(plan.root, "report.md"), render_markdown(manifest, report),
                                  cfg.storage)
        outputs = publish(cfg, manifest, plan.root, lease)  # manifest files, _SUCCESS, then latest pointer
        metrics.weights(final)
        log.info("published %s: %s", outputs["manifest.json"], {d: round(w, 4) for d, w in final.items()})
        return RefreshResult(run_id=plan.run_id, run_root=plan.root, manifest_uri=outputs["manifest.json"],
                             weights=final, outputs=outputs, influence=infl, report=report)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _finished(cfg: RunConfig, plan: Plan) -> RefreshResult | None:
    """A run whose `_SUCCESS` exists is not recomputed: return its published result."""
    success = storage.join(plan.root, "_SUCCESS")
    if not storage.exists(success, cfg.storage):
        return None
    from operators.manifest import parse_manifest, weights_of

    uri = storage.read_json(success, cfg.storage)["manifest_uri"]
    manifest = parse_manifest(storage.read_bytes(uri, cfg.storage))
    report_uri = storage.join(plan.root, "report.json")
    report = storage.read_json(report_uri, cfg.storage) if storage.exists(report_uri, cfg.storage) else {}
    log.info("run %s already finished; manifest %s", plan.run_id, uri)
    return RefreshResult(run_id=plan.run_id, run_root=plan.root, manifest_uri=uri, weights=weights_of(manifest),
                         outputs={"manifest.json": uri}, influence=None, report=report)  # type: ignore[arg-type]


def _step_of(model_uri: str) -> int | None:
    import re

    match = re.search(r"(?:checkpoint|step)[-_](\d+)/?$", model_uri.rstrip("/"))
    return int(match.group(1)) if match else None
