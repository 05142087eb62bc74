"""Influence aggregation as map-reduce on Ray: feature shards → preconditioned group influence (TiKMiX).

Map tasks (workflows/jobs/aggregate_shard.py, fanned out by cluster.parallel.map_shards) read each feature
shard once per pass in record batches and return small statistics; the driver folds them in shard
order (bit-identical for any worker count) and only ever holds k×k and K×k-sized objects:

1. pass 1: Gram ΦᵀΦ and n (gauss_newton) or K-FAC factor sums per corpus shard; token-weighted target
   sums per target shard → directions d_v = Ĥ⁻¹ t_v (t_v token-weighted, see operators/influence/group.py);
2. pass 2: per-example scores s_iv = φ_i·d_v written to score shards (keyed by the directions),
   per-domain sums/counts/tokens and Poisson-bootstrap sums → GI[k, v] (mean score of domain k on
   target v), per-target z-scores, weighted scores, CIs.

Both passes keep their per-shard results in each shard's datastore folder, so an analysis run on known
features (another β, bootstrap, solver, validation setting) reads small cached statistics or score
shards instead of the features; ``InfluenceResult.reuse`` (report.json ``aggregation``) counts them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cluster.parallel import map_shards
from cluster.runtime import layout_or_local
from operators.features import datastore
from operators.io import storage
from operators.errors import ConfigError
from operators.influence.group import (
    BootstrapSums,
    bootstrap_intervals,
    combine_targets,
    normalize_per_target,
    token_weighted_means,
)
from operators.influence.precondition import GaussNewtonPreconditioner, IdentityPreconditioner, KFACPreconditioner
from workflows.jobs.aggregate_shard import PreconditionerJob, ScoreJob
from workflows.config import RunConfig
from workflows.run.plan import Plan, plan_completions
from workflows.solvers import SOLVERS
from workflows.stages.base import RunContext, Stage
from workflows.stages.checkpoint_average import CheckpointSet, average_results
from workflows.stages.featurize import repair_parts
from workflows.stages.problem import build_problem, load_previous

log = logging.getLogger(__name__)


@dataclass
class InfluenceResult:
    """Everything the mixture solver, the manifest and MATES need from the feature datastore.

    Per-example scores are not held here: they live in score shards under ``scores_uri``.
    """

    domains: list[str]
    targets: list[str]
    target_weights: np.ndarray
    gi: np.ndarray  # (K, V) mean preconditioned influence of domain k on target v
    gi_normalized: np.ndarray  # (K, V) on the solver scale (influence.normalize)
    scores: np.ndarray  # (K,) weighted combination over targets
    counts: dict[str, int]
    tokens: dict[str, int]
    target_counts: dict[str, int]
    preconditioner: dict = field(default_factory=dict)
    bootstrap: dict = field(default_factory=dict)
    scores_uri: str = ""
    gi_se: np.ndarray | None = None  # (K, V) bootstrap standard error of gi (None without bootstrap)
    reuse: dict = field(default_factory=dict)  # how many shards each pass took from the analysis cache


def _pass1(cfg: RunConfig, plan: Plan, layout: dict | None, workers):
    """Fold pass-1 statistics → (preconditioner, target sums, target tokens, target counts)."""
    kind = cfg.influence.preconditioner
    names = [t.name for t in cfg.targets]
    job = PreconditionerJob(plan.root, cfg.storage, kind, tuple(names), cfg.featurize.loss_reduction,
                            shard_roots=plan.shard_roots())
    items = [(t.shard_id, "target") for t in plan.target_tasks()]
    if kind == "kfac":
        if layout is None:
            raise ConfigError("kfac preconditioning needs the featurizer layer layout (featurizer.json)")
        slices = {n: slice(v["start"], v["stop"]) for n, v in layout.items()}
        pre = KFACPreconditioner(slices, {n: (v["r_out"], v["r_in"]) for n, v in layout.items()})
    elif kind == "gauss_newton":
        pre = None
    else:
        pre = IdentityPreconditioner()
    if kind != "identity":
        items += [(t.shard_id, "corpus") for t in plan.corpus_tasks()]
    t_sums = t_tokens = t_counts = None
    reused = 0
    for (_, role), stats in zip(items, map_shards(job, items, workers, cfg.cluster.max_task_retries)):
        reused += str(stats.pop("source", "")) == "cache"
        if role == "target":
            if "sums" in stats:
                t_sums = stats["sums"] if t_sums is None else t_sums + stats["sums"]
                t_tokens = stats["tokens"] if t_tokens is None else t_tokens + stats["tokens"]
                t_counts = stats["counts"] if t_counts is None else t_counts + stats["counts"]
        elif kind == "kfac":
            pre.update(stats["kfac"])
        elif stats:
            part = GaussNewtonPreconditioner.from_state(stats)
            if pre is None:
                pre = part
            else:
                pre.merge(part)
    if t_counts is None or np.any(t_counts == 0):
        empty = names if t_counts is None else [n for n, c in zip(names, t_counts) if c == 0]
        raise ConfigError(f"target sets {empty} have no usable examples (empty or all too short)")
    if pre is None:
        pre = GaussNewtonPreconditioner(t_sums.shape[1])  # no corpus rows: solve() names the problem
    return pre, t_sums, t_tokens, t_counts, {"pass1_shards": len(items), "pass1_reused": reused}


def domain_order(cfg: RunConfig, plan: Plan) -> tuple[list[str], dict[str, int]]:
    """Domains to mix (sorted, or as listed in corpus.domains) and their featurized token counts."""
    done = plan_completions(plan, cfg.storage)
    tokens: dict[str, int] = {}
    rows: dict[str, int] = {}
    for task in plan.corpus_tasks():
        record = done.get(task.shard_id)
        if record is None:
            raise ConfigError(f"shard {task.shard_id} has no completion record; featurize it first")
        for d, n in record.domain_tokens.items():
            tokens[d] = tokens.get(d, 0) + int(n)
        for d, n in record.domain_rows_all.items():
            rows[d] = rows.get(d, 0) + int(n)
    unusable = sorted(d for d, n in rows.items() if n > 0 and not tokens.get(d)
                      and (not cfg.corpus.domains or d in cfg.corpus.domains))
    if unusable:  # never drop a domain silently: it has rows, but nothing of it could be featurized
        raise ConfigError(
            f"corpus domain(s) {unusable} have {[rows[d] for d in unusable]} rows but no usable example "
            f"(texts empty or shorter than sampling.min_chars={cfg.sampling.min_chars}, under 2 tokens, or none "
            f"drawn at sampling.rate={cfg.sampling.rate}); fix the data, or leave them out with corpus.domains")
    order = sorted(tokens)
    if cfg.corpus.domains:
        missing = sorted(set(cfg.corpus.domains) - set(order))
        if missing:
            raise ConfigError(f"corpus.domains lists {missing} but no examples of them were featurized")
        order = list(cfg.corpus.domains)
    if len(order) < 2:
        raise ConfigError(f"need at least 2 domains to mix, found {order}")
    return order, {d: tokens.get(d, 0) for d in order}


def aggregate_influence(cfg: RunConfig, plan: Plan, order: list[str], kfac_layout: dict | None = None,
                        extra: Callable[[np.ndarray, np.ndarray | None], np.ndarray] | None = None) -> InfluenceResult:
    """Two map-reduce passes over the feature shards (see the module docstring).

    ``extra`` maps a bootstrap replicate's raw GI (K, V) and the standard errors to a (K,) vector (e.g.
    the mixture weights it induces); its percentile CI is returned as ``bootstrap["extra_low"/"extra_high"]``.
    """
    targets = [t.name for t in cfg.targets]
    weights = np.array([t.weight for t in cfg.targets], dtype=np.float64)
    spec = cfg.influence
    workers = layout_or_local(cfg.cluster)
    pre, t_sums, t_tokens, t_counts, reuse = _pass1(cfg, plan, kfac_layout, workers)
    directions = pre.solve(token_weighted_means(t_sums, t_tokens, targets), relative_damping=spec.relative_damping)
    job = ScoreJob(plan.root, cfg.storage, tuple(order), np.asarray(directions, dtype=np.float64),
                   spec.bootstrap, spec.seed, shard_roots=plan.shard_roots())
    shards = [t.shard_id for t in plan.corpus_tasks()]
    sums = np.zeros((len(order), len(targets)))
    counts = np.zeros(len(order), dtype=np.int64)
    tokens = np.zeros(len(order), dtype=np.int64)
    boot = BootstrapSums(spec.bootstrap, len(order), len(targets))
    by_tokens = spec.domain_weighting == "tokens"
    prefix = "tok_" if by_tokens else ""
    rows = 0
    sources = {"stats": 0, "scores": 0, "features": 0}
    for stats in map_shards(job, shards, workers, cfg.cluster.max_task_retries):
        sources[str(stats.pop("source", "features"))] += 1
        sums += stats[f"{prefix}sums"]
        counts += stats["counts"]
        tokens += stats["tokens"]
        boot.sums += stats[f"boot_{prefix}sums"]
        boot.counts += stats[f"boot_{prefix}counts"]
        rows += int(stats["rows"])
    empty = [d for d, c in zip(order, counts) if c == 0]
    if empty:
        raise ConfigError(f"domains with no examples: {empty}")
    gi = sums / (tokens if by_tokens else counts)[:, None]
    gi_norm = normalize_per_target(gi, spec.normalize)
    combined = combine_targets(gi_norm, weights)
    ci: dict = {}
    se = None
    if spec.bootstrap > 0:
        boot_gi = boot.gi(gi)
        se = boot_gi.std(axis=0, ddof=1) if spec.bootstrap > 1 else None
        ci = bootstrap_intervals(boot_gi, weights, spec.confidence, spec.normalize,
                                 None if extra is None else (lambda g: extra(g, se)))
    log.info("group influence over %d examples, %d domains, %d targets (%d workers)", rows, len(order),
             len(targets), workers.num_workers)
    pre_info = {"kind": spec.preconditioner, "relative_damping": spec.relative_damping, "n": rows}
    return InfluenceResult(
        domains=order, targets=targets, target_weights=weights / weights.sum(), gi=gi, gi_normalized=gi_norm,
        scores=combined, counts=dict(zip(order, counts.tolist())), tokens=dict(zip(order, tokens.tolist())),
        target_counts=dict(zip(targets, t_counts.astype(int).tolist())), preconditioner=pre_info,
        bootstrap=ci, gi_se=se, scores_uri=storage.join(  # per shard, in its datastore folder
            storage.join(plan.store, "shards", "*") if plan.store else plan.root, "influence", job.scores_key, "scores"),
        reuse={**reuse, "score_shards": len(shards), "scores_from_stats": sources["stats"],
               "scores_from_score_shards": sources["scores"], "scores_from_features": sources["features"]},
    )


def average_influence(cfg: RunConfig, cset: CheckpointSet, order: list[str], layout: dict | None = None,
                      extra: Callable[[np.ndarray, np.ndarray | None], np.ndarray] | None = None) -> InfluenceResult:
    """Group influence of the refresh: :func:`aggregate_influence` on the single plan, or per checkpoint
    (bootstrap off) then :func:`~workflows.stages.checkpoint_average.average_results`. ``layout``: the
    K-FAC layout (same for every checkpoint of one architecture and projector)."""
    if not cset.averaged:
        return aggregate_influence(cfg, cset.plans[0], order, layout, extra=extra)
    no_boot = cfg.model_copy(update={"influence": cfg.influence.model_copy(update={"bootstrap": 0})})
    results = [aggregate_influence(no_boot, p, order, layout) for p in cset.plans[:-1]]
    results.append(aggregate_influence(cfg, cset.plans[-1], order, layout, extra=extra))
    return average_results(cfg, results, list(cset.checkpoints))


class AggregateStage(Stage):
    """Group influence (two map-reduce passes over the feature shards, averaged over checkpoints) and
    the mixture problem it defines. Its per-shard statistics are cached under the run root, so loading
    it for a later stage recomputes only the driver-side fold."""

    name = "aggregate"

    def run(self, ctx: RunContext) -> None:
        cfg, cset = ctx.cfg, ctx.checkpoints
        ctx.previous_uri, ctx.previous = load_previous(cfg, ctx.pins["previous_manifest"])
        order, _ = domain_order(cfg, cset.newest)
        available = datastore.estimated_tokens_available(plan_completions(cset.newest, cfg.storage))
        template = build_problem(cfg, order, available, ctx.previous, ctx.model_uri)
        proxy = SOLVERS.configured(cfg.mixture.solver, cfg.mixture.options).bootstrap_solver(cfg.mixture.options)
        layout = ctx.featurizer.get("featurizer", {}).get("kfac_layout")
        # a feature part whose checksum fails is featurized again, then the aggregation reruns
        ctx.influence = repair_parts(ctx, lambda: average_influence(
            cfg, ctx.checkpoints, order, layout,
            extra=lambda gi, se: proxy.solve(template.with_gi(gi, se)).weights))
        ctx.problem = template.with_gi(ctx.influence.gi, ctx.influence.gi_se)

    def load(self, ctx: RunContext) -> None:
        self.run(ctx)
