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

from cluster.parallel import parallel_map
from operators.mixture.decision import budget_pool_sizes, decide, predicted_vs_measured
from operators.model.loading import checkpoint_adam_state, load_causal_lm, load_tokenizer
from operators.training.probing import probe_mixture
from operators.model.tokenize import prepare_tokenizer
from workflows.config import RunConfig
from workflows.jobs.examples import domain_pools, reference_set
from workflows.run.plan import Plan
from workflows.solvers.base import MixtureProblem

log = logging.getLogger(__name__)


class CandidateProber:
    """Picklable probe job: load the checkpoint once per task, return ΔL for (weights, seed) items."""

    def __init__(self, cfg: RunConfig, model_uri: str, domains: list[str], pools: dict, ref) -> None:
        self.cfg_data = cfg.model_dump(mode="json")
        self.model_uri, self.domains, self.pools, self.ref = model_uri, domains, pools, ref

    def __call__(self, items: list[tuple[list[float], int]], device: str) -> list[float]:
        cfg = RunConfig.model_validate(self.cfg_data)
        spec = cfg.mixture.validation
        loaded = load_causal_lm(self.model_uri, device=device, dtype="float32", storage=cfg.storage,
                                cache_dir=cfg.model.cache_dir)
        adam = checkpoint_adam_state(loaded)
        out = []
        for weights, seed in items:
            w = {d: float(x) for d, x in zip(self.domains, weights) if x > 0 and d in self.pools}
            out.append(float(probe_mixture(loaded.model, self.pools, w, spec.steps, spec.batch_size,
                                           self.ref[0], self.ref[1], spec.probe, seed, optimizer_state=adam)))
        return out


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


def _pools(cfg: RunConfig, plan: Plan, problem: MixtureProblem, tokenizer) -> tuple[dict, dict[str, int]]:
    spec = cfg.mixture.validation
    pools = domain_pools(cfg, plan, tokenizer, per_domain=spec.max_pool, seed=spec.seed, domains=problem.domains)
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
    candidates: dict[str, tuple[np.ndarray, str]] = {"reference": (problem.reference, problem.reference_kind)}
    for name, w in solved.items():
        candidates[name] = (w, "solver")
    for t in spec.line_points:
        w = (1 - t) * problem.reference + t * solved[primary]
        candidates[f"line:{t:g}"] = (w / w.sum(), f"{t:g} of the way from reference to {primary}")
    for name, w in baselines.items():
        candidates[f"baseline:{name}"] = (w, "baseline")
    kept, alias = dedupe(candidates)
    tokenizer = prepare_tokenizer(load_tokenizer(model_uri, storage=cfg.storage, cache_dir=cfg.model.cache_dir))
    pools, pool_sizes = _pools(cfg, plan, problem, tokenizer)
    ref = reference_set(cfg, plan, tokenizer, total=spec.reference_examples, seed=spec.seed, split="validation")
    prober = CandidateProber(cfg, model_uri, problem.domains, pools, ref)
    seeds = [spec.seed + i for i in range(spec.seeds)]
    items = [(w.tolist(), s) for w, _ in kept.values() for s in seeds]
    values = np.array(parallel_map(prober, items, layout)).reshape(len(kept), len(seeds))
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
