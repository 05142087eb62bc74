"""The main workflow: plan → featurize on Ray → group influence → mixture → manifest."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from operators.features import datastore

from operators.io import storage
from workflows.stages.aggregate import InfluenceResult, domain_order
from workflows.baselines import BASELINES
from workflows.stages.checkpoint_average import average_influence, featurize_all, plan_checkpoints
from workflows.config import BUILTIN_MODEL, RunConfig, dump_config
from workflows.stages.featurize import run_featurize
from workflows.run.integrity import check_unique_ids, skipped_examples
from workflows.run.lease import run_lease
from workflows.stages.problem import build_problem, load_previous
from workflows.run.pins import pin_run
from workflows.run.plan import Plan, build_plan, check_or_record_plan
from workflows.stages.publish import build_manifest, manifest_dir, publish
from workflows.stages.report import ranking_stability, render_markdown
from workflows.solvers import SOLVERS, MixtureProblem, SolveContext
from workflows.stages.validate import run_validation

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
        from operators.model.loading import find_latest_checkpoint

        return find_latest_checkpoint(cfg.model.checkpoint_root, cfg.storage)
    if cfg.model.path == BUILTIN_MODEL:
        from workflows.assets import ensure_default_checkpoint

        return ensure_default_checkpoint(cfg.model.cache_dir, cfg.model.tiny)
    return cfg.model.path


def _check_storage(cfg: RunConfig) -> None:
    for uri in [cfg.output_uri, *cfg.corpus.paths]:
        storage.check_reachable(uri, cfg.storage)


def prepare_run(cfg: RunConfig, pins: dict | None = None) -> tuple[Plan, str]:
    """Plan, resolve the model and record the plan (the caller has checked storage: `_check_storage`)."""
    plan = build_plan(cfg)  # cheap input validation first: missing shards fail before any model work
    model_uri = resolve_model_uri(cfg)
    resumed = check_or_record_plan(plan, cfg.storage, pins)
    if not resumed:
        storage.write_text_atomic(storage.join(plan.root, "config.yaml"), dump_config(cfg), cfg.storage)
    log.info("run %s (%s) at %s; model %s", plan.run_id, "resuming" if resumed else "new", plan.root, model_uri)
    return plan, model_uri


def _solve_all(cfg: RunConfig, problem: MixtureProblem, ctx: SolveContext) -> tuple[dict, dict]:
    """Primary and comparison solvers, then baselines, on one problem: name → SolverResult."""
    solved = {}
    for name in dict.fromkeys([cfg.mixture.solver, *cfg.mixture.compare]):
        solved[name] = SOLVERS.configured(name, cfg.mixture.options).solve(problem, ctx)
        log.info("solver %s: %s", name, dict(zip(problem.domains, solved[name].weights.round(4).tolist())))
    solved.update(_beta_path(cfg, problem, ctx))
    baselines = {}
    for name in cfg.mixture.baselines:
        baselines[name] = BASELINES.configured(name, cfg.mixture.options).solve(problem, ctx)
    return solved, baselines


def _beta_path(cfg: RunConfig, problem: MixtureProblem, ctx: SolveContext) -> dict:
    """The primary solver re-solved with stronger pulls to its prior (β × m, m in ``validation.beta_path``): extra
    candidates between its answer and the prior, validated like any other (regularised solvers only)."""
    name = cfg.mixture.solver
    cls = SOLVERS.get(name)
    if cls.measures or "beta" not in cls.Options.model_fields or not cfg.mixture.validation.enabled:
        return {}
    beta = float((cfg.mixture.options.get(name) or {}).get("beta") or cfg.mixture.beta)
    return {f"{name}@beta={beta * m:g}":
            SOLVERS.configured(name, cfg.mixture.options, beta=beta * m).solve(problem, ctx)
            for m in cfg.mixture.validation.beta_path}


def _bootstrap_solver(cfg: RunConfig, problem_of: Callable[[np.ndarray], MixtureProblem]):
    """Weights of a bootstrap replicate's GI (K, V) under the primary solver (TiKMiX-D if it trains)."""
    name = cfg.mixture.solver
    if SOLVERS.get(name).measures:
        name = "tikmix_d"
    solver = SOLVERS.configured(name, cfg.mixture.options)
    return lambda gi: solver.solve(problem_of(gi)).weights


def _problem_report(problem: MixtureProblem, weights: np.ndarray) -> dict:
    b = problem.budget
    return {"domains": problem.domains, "targets": problem.targets, "normalize": problem.normalize,
            "prior": problem.prior_kind, "reference": problem.reference_kind,
            "reference_weights": dict(zip(problem.domains, problem.reference.round(6).tolist())),
            "lower": dict(zip(problem.domains, problem.lower.tolist())),
            "upper": dict(zip(problem.domains, problem.upper.tolist())),
            "budget": {"tokens_next_stage": b.tokens_next_stage, "source": b.source, "max_epochs": b.max_epochs,
                       "repetition_scale": b.repetition_scale,
                       "tokens_available": dict(zip(problem.domains, b.tokens_available.tolist()))},
            "planned_epochs": problem.epochs(weights)}


def run_mixture_refresh(cfg: RunConfig) -> RefreshResult:
    """Run (or resume) one mixture refresh end to end and publish its manifest."""
    t0 = time.monotonic()
    _check_storage(cfg)
    cfg, pins = pin_run(cfg)  # checkpoint + previous manifest, resolved once per run (workflows/run/pins.py)
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
    from cluster.runtime import init_ray, layout_or_local

    started_ray = init_ray(cfg.cluster)
    try:
        metrics = DriverMetrics(plan.run_id)
        ckpts = plan_checkpoints(cfg, plan, model_uri)  # [model_uri] at the run root unless averaging
        featurizer = featurize_all(ckpts, lambda p, uri: run_featurize(cfg, p, uri, metrics))
        check_unique_ids(cfg, ckpts.newest)
        t_feat = time.monotonic()
        previous_uri, previous = load_previous(cfg, pins["previous_manifest"])
        order, _ = domain_order(cfg, ckpts.newest)
        available = datastore.estimated_tokens_available(datastore.list_completions(ckpts.newest.root, cfg.storage))
        template = build_problem(cfg, order, available, previous, model_uri)
        layout = featurizer.get("featurizer", {}).get("kfac_layout")
        infl = average_influence(cfg, ckpts, order, layout, extra=_bootstrap_solver(cfg, template.with_gi))
        problem = template.with_gi(infl.gi)
        ctx = SolveContext(cfg=cfg, plan=plan, model_uri=model_uri, layout=layout_or_local(cfg.cluster))
        solved, baselines = _solve_all(cfg, problem, ctx)
        t_solve = time.monotonic()
        primary = cfg.mixture.solver
        weights, source = solved[primary].weights, primary
        report: dict = {
            "solvers": {n: {**r.report, "weights": dict(zip(order, r.weights.tolist()))} for n, r in solved.items()},
            "baselines": {n: {**r.report, "weights": dict(zip(order, r.weights.tolist()))}
                          for n, r in baselines.items()},
            "skipped_examples": skipped_examples(cfg, ckpts.newest)}
        validation = None
        if cfg.mixture.validation.enabled:
            validation = run_validation(cfg, plan, model_uri, problem, {n: r.weights for n, r in solved.items()},
                                        {n: r.weights for n, r in baselines.items()}, primary, ctx.layout)
            weights, source = validation.pop("published_weights"), validation["published"]
            report["validation"] = validation
        t_valid = time.monotonic()
        selection = None
        if cfg.mates.enabled:
            from workflows.stages.mates import run_mates

            selection, report["mates"] = run_mates(cfg, plan, model_uri, dict(zip(order, weights.tolist())),
                                                   manifest_dir(cfg))
        report["problem"] = _problem_report(problem, weights)
        report["checkpoints"] = ckpts.describe()
        solver_info = {"name": primary, "published": source, "beta": cfg.mixture.beta, "prior": problem.prior_kind,
                       "reference": problem.reference_kind, **solved[primary].report}
        manifest = build_manifest(
            cfg, infl, weights, model_uri=model_uri, model_fingerprint=featurizer.get("model", ""),
            checkpoint_step=_step_of(model_uri), projector=featurizer.get("featurizer", {}), solver=solver_info,
            previous_uri=previous_uri, previous_weights=problem.previous_weights,
            tokens_available=problem.info["tokens_available"], selection=selection,
            budget=report["problem"]["budget"], planned_epochs=report["problem"]["planned_epochs"],
            validation=_validation_summary(validation))
        final = dict(zip(order, weights.tolist()))
        scores = dict(zip(order, problem.scores.tolist()))
        report.update({"timings_s": {"featurize": round(t_feat - t0, 2), "aggregate_and_solve": round(t_solve - t_feat, 2),
                                     "validate": round(t_valid - t_solve, 2),
                                     "total": round(time.monotonic() - t0, 2)},
                       "published": source, "weights": final, "domain_scores": scores,
                       "ranking_spearman_vs_previous": ranking_stability(scores, previous)})
        storage.write_json_atomic(storage.join(plan.root, "report.json"), report, cfg.storage)
        storage.write_text_atomic(storage.join(plan.root, "report.md"), render_markdown(manifest, report),
                                  cfg.storage)
        outputs = publish(cfg, manifest, plan.root, lease)  # manifest files, _SUCCESS, then latest pointer
        metrics.weights(final)
        log.info("published %s (%s): %s", outputs["manifest.json"], source,
                 {d: round(w, 4) for d, w in final.items()})
        return RefreshResult(run_id=plan.run_id, run_root=plan.root, manifest_uri=outputs["manifest.json"],
                             weights=final, outputs=outputs, influence=infl, report=report)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _validation_summary(validation: dict | None) -> dict:
    if not validation:
        return {"enabled": False}
    pub = validation["candidates"][validation["published"]]
    return {"enabled": True, "published": validation["published"], "best": validation["best"],
            "improvement_found": validation["improvement_found"], "gain_nats": pub["gain"],
            "gain_ci": pub["ci"], "seed_std": validation["seed_std"], "split": validation["split"]}


def _finished(cfg: RunConfig, plan: Plan) -> RefreshResult | None:
    """A run whose `_SUCCESS` exists is not recomputed: return its published result."""
    success = storage.join(plan.root, "_SUCCESS")
    if not storage.exists(success, cfg.storage):
        return None
    from operators.manifest.schema import parse_manifest, weights_of

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
