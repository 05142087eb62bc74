"""Validate before publishing: train short probes from the checkpoint on each candidate mixture.

Candidates: the reference (previous mixture, else the prior), every solver's answer, points on the line
between the reference and the primary solver's answer, and the baselines. Every candidate is trained
for ``validation.steps`` steps × ``validation.seeds`` seeds (Ray tasks, one per worker slot; the
checkpoint's AdamW state is continued when it has one) and scored on the VALIDATION split of the
targets, which influence never saw. Probe pools are budget-scaled by default, so a domain that the next
stage would repeat 10 times is repeated about 10 times in the probe too. The decision rule is in
operators/mixture/decision.py.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from operators.mixture.decision import budget_pool_sizes, decide, predicted_vs_measured
from workflows.config import RunConfig, ValidationSpec
from workflows.jobs.examples import ExampleSource, domain_pools, reference_set
from workflows.jobs.probes import MixtureProber, measure
from workflows.stages.base import RunContext, Stage
from workflows.stages.featurize import model_source
from workflows.run.plan import Plan
from workflows.solvers.base import MixtureProblem

log = logging.getLogger(__name__)


def dedupe(candidates: dict[str, tuple[np.ndarray, str]], tol: float = 1e-3) -> tuple[dict, dict[str, str]]:
    """Drop candidates within L1 distance ``tol`` of an earlier one; returns (kept, alias → kept name)."""
    kept: dict[str, tuple[np.ndarray, str]] = {}
    alias: dict[str, str] = {}
    for name, (w, source) in candidates.items():
        twin = next((k for k, (v, _) in kept.items() if np.abs(v - w).sum() < tol), None)
        if twin is None:
            kept[name] = (w, source)
        else:
            alias[name] = twin
    return kept, alias


def build_candidates(spec: ValidationSpec, problem: MixtureProblem, solved: dict[str, np.ndarray],
                     baselines: dict[str, np.ndarray], primary: str) -> dict[str, tuple[np.ndarray, str]]:
    """Every mixture validation measures, name → (weights, where it came from): the reference first, then
    every solver's answer, points on the line from the reference to the primary answer, the baselines."""
    candidates: dict[str, tuple[np.ndarray, str]] = {"reference": (problem.reference, problem.reference_kind)}
    for name, w in solved.items():
        candidates[name] = (w, "solver")
    for t in spec.line_points:
        w = (1 - t) * problem.reference + t * solved[primary]
        candidates[f"line:{t:g}"] = (w / w.sum(), f"{t:g} of the way from reference to {primary}")
    for name, w in baselines.items():
        candidates[f"baseline:{name}"] = (w, "baseline")
    return candidates


def _pools(cfg: RunConfig, plan: Plan, problem: MixtureProblem, tokenizer) -> tuple[dict, dict[str, int]]:
    spec = cfg.mixture.validation
    pools = domain_pools(ExampleSource.of(cfg), plan, tokenizer, per_domain=spec.max_pool, seed=spec.seed, domains=problem.domains)
    if not spec.budget_scaled_pools:
        return pools, {d: int(p[0].shape[0]) for d, p in pools.items()}
    sizes = budget_pool_sizes(problem.budget.tokens_available, problem.budget.tokens_next_stage,
                              spec.steps * spec.batch_size, spec.max_pool)
    scaled = {d: (pools[d][0][:n], pools[d][1][:n]) for d, n in zip(problem.domains, sizes.tolist()) if d in pools}
    return scaled, {d: int(p[0].shape[0]) for d, p in scaled.items()}


def run_validation(cfg: RunConfig, plan: Plan, model_uri: str, problem: MixtureProblem,
                   solved: dict[str, np.ndarray], baselines: dict[str, np.ndarray], primary: str,
                   layout) -> dict:
    """Measure every candidate; return the report section with the decision (see module docstring)."""
    spec = cfg.mixture.validation
    t0 = time.monotonic()
    kept, alias = dedupe(build_candidates(spec, problem, solved, baselines, primary))
    model = model_source(cfg, model_uri)
    tokenizer = model.tokenizer()
    pools, pool_sizes = _pools(cfg, plan, problem, tokenizer)
    ref = reference_set(ExampleSource.of(cfg), plan, tokenizer, total=spec.reference_examples, seed=spec.seed,
                        split="validation")
    seeds = [spec.seed + i for i in range(spec.seeds)]
    prober = MixtureProber(model, problem.domains, {s: pools for s in seeds}, ref, spec.steps, spec.batch_size,
                           spec.probe)
    values = measure(prober, [w for w, _ in kept.values()], seeds, layout)
    delta = dict(zip(kept, values))
    eligible = [n for n, (_, src) in kept.items() if src != "baseline" or spec.baselines_eligible]
    decision = decide(delta, "reference", eligible, spec.margin)
    scores = problem.scores
    predicted = {n: float((w - problem.reference) @ scores) for n, (w, _) in kept.items()}
    measured = {n: decision["candidates"][n]["gain"] for n in kept}
    for name, (w, source) in kept.items():
        decision["candidates"][name].update({
            "source": source, "weights": dict(zip(problem.domains, np.round(w, 6).tolist())),
            "predicted_score_gain": predicted[name],
            "planned_epochs": {d: round(e, 3) for d, e in problem.epochs(w).items()}})
    decision.update({
        "aliases": alias, "seeds": seeds, "steps": spec.steps, "batch_size": spec.batch_size,
        "pool_sizes": pool_sizes, "budget_scaled_pools": spec.budget_scaled_pools,
        "reference_examples": int(ref[0].shape[0]), "split": "validation",
        "predicted_vs_measured": predicted_vs_measured(predicted, measured),
        "wall_s": round(time.monotonic() - t0, 2)})
    decision["published_weights"] = kept[decision["published"]][0]
    log.info("validation: published %s (gain %.4f nats, %s); best %s", decision["published"],
             decision["candidates"][decision["published"]]["gain"],
             "improvement found" if decision["improvement_found"] else "no improvement found",
             decision["best"])
    return decision


def probe_optimizer_report(cfg: RunConfig, optimizer: dict) -> dict:
    """Which optimizer state and hyperparameters the probes used (from preflight's optimizer check)."""
    probe = cfg.mixture.validation.probe
    out = {"moments": optimizer["moments"], "hyperparameters": optimizer["hyperparameters"]}
    if optimizer.get("reason"):
        out["reason"] = optimizer["reason"]
    if optimizer["hyperparameters"] == "config" or not optimizer.get("groups"):
        out["groups"] = [{"lr": probe.lr, "betas": list(probe.betas), "weight_decay": probe.weight_decay}]
    else:
        out["groups"] = optimizer["groups"]
        out["lr_source"] = optimizer.get("lr_source")
    for key in ("path", "format", "step"):
        if key in optimizer:
            out[key] = optimizer[key]
    return out


class ValidateStage(Stage):
    """Short probe trainings of every candidate on the validation split, and the publish decision;
    ``stages/validate.json``."""

    name = "validate"

    def enabled(self, ctx: RunContext) -> bool:
        return ctx.cfg.mixture.validation.enabled

    def run(self, ctx: RunContext) -> None:
        decision = run_validation(ctx.cfg, ctx.plan, ctx.model_uri, ctx.problem,
                                  {n: r.weights for n, r in ctx.solved.items()},
                                  {n: r.weights for n, r in ctx.baselines.items()}, ctx.cfg.mixture.solver,
                                  ctx.layout)
        optimizer = ctx.preflight.get("model", {}).get("optimizer")
        if optimizer:  # what the probes continued: the checkpoint's AdamW moments or a fresh AdamW
            decision["probe_optimizer"] = probe_optimizer_report(ctx.cfg, optimizer)
        ctx.validation = decision
        ctx.save_record(self.name, {**decision, "published_weights": decision["published_weights"].tolist()})

    def load(self, ctx: RunContext) -> None:
        record = ctx.load_record(self.name)
        ctx.validation = {**record, "published_weights": np.asarray(record["published_weights"])}
