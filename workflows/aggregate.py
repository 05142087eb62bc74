"""Driver-side aggregation: feature shards → preconditioned group influence per domain (TiKMiX)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from operators import datastore, storage
from operators.errors import ConfigError
from operators.influence import (
    bootstrap_influence,
    combine_targets,
    group_influence,
    normalize_per_target,
    per_example_scores,
)
from operators.precondition import GaussNewtonPreconditioner, IdentityPreconditioner, KFACPreconditioner
from workflows.config import RunConfig
from workflows.plan import Plan

log = logging.getLogger(__name__)


@dataclass
class InfluenceResult:
    """Everything the mixture solver, the manifest and MATES need from the feature datastore."""

    domains: list[str]
    targets: list[str]
    target_weights: np.ndarray
    gi: np.ndarray  # (K, V) mean preconditioned influence of domain k on target v
    gi_normalized: np.ndarray  # (K, V) per-target z-scores
    scores: np.ndarray  # (K,) weighted combination over targets
    counts: dict[str, int]
    tokens: dict[str, int]
    target_counts: dict[str, int]
    example_ids: list[str] = field(repr=False, default_factory=list)
    example_domains: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=object))
    example_scores: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0)))
    preconditioner: dict = field(default_factory=dict)
    bootstrap: dict = field(default_factory=dict)


def _iter_shards(plan: Plan, role: str, spec: storage.StorageSpec) -> Iterator[tuple[str, object]]:
    tasks = plan.corpus_tasks() if role == "corpus" else plan.target_tasks()
    for task in tasks:
        uri = datastore.feature_uri(plan.root, task.shard_id)
        yield task.shard_id, datastore.read_feature_shard(uri, spec)


def _target_means(cfg: RunConfig, plan: Plan) -> tuple[np.ndarray, dict[str, int]]:
    names = [t.name for t in cfg.targets]
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {n: 0 for n in names}
    for _, table in _iter_shards(plan, "target", cfg.storage):
        feats = datastore.features_to_numpy(table).astype(np.float64)
        labels = np.asarray(table.column("domain").to_pylist(), dtype=object)
        for name in set(labels.tolist()):
            mask = labels == name
            sums[name] = sums.get(name, 0) + feats[mask].sum(axis=0)
            counts[name] += int(mask.sum())
    empty = [n for n in names if counts[n] == 0]
    if empty:
        raise ConfigError(f"target sets {empty} have no usable examples (empty or all too short)")
    return np.stack([sums[n] / counts[n] for n in names]), counts


def _preconditioner(cfg: RunConfig, plan: Plan, layout: dict | None, dim: int):
    kind = cfg.influence.preconditioner
    if kind == "identity":
        return IdentityPreconditioner()
    if kind == "gauss_newton":
        pre = GaussNewtonPreconditioner(dim)
        for _, table in _iter_shards(plan, "corpus", cfg.storage):
            pre.update(datastore.features_to_numpy(table))
        return pre
    if layout is None:
        raise ConfigError("kfac preconditioning needs the featurizer layer layout (featurizer.json)")
    slices = {n: slice(v["start"], v["stop"]) for n, v in layout.items()}
    shapes = {n: (v["r_out"], v["r_in"]) for n, v in layout.items()}
    pre = KFACPreconditioner(slices, shapes)
    from workflows.featurize_shard import kfac_from_arrays

    for task in plan.corpus_tasks():
        pre.update(kfac_from_arrays(datastore.read_npz(datastore.kfac_uri(plan.root, task.shard_id),
                                                       cfg.storage)))
    return pre


def domain_order(cfg: RunConfig, plan: Plan) -> tuple[list[str], dict[str, int]]:
    """Domains to mix (sorted, or as listed in corpus.domains) and their featurized token counts."""
    done = datastore.list_completions(plan.root, cfg.storage)
    tokens: dict[str, int] = {}
    for task in plan.corpus_tasks():
        record = done.get(task.shard_id)
        if record is None:
            raise ConfigError(f"shard {task.shard_id} has no completion record; featurize it first")
        for d, n in record.domain_tokens.items():
            tokens[d] = tokens.get(d, 0) + int(n)
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
                        extra: Callable[[np.ndarray], np.ndarray] | None = None) -> InfluenceResult:
    """Two streaming passes over the corpus feature shards (preconditioner, then scores)."""
    targets = [t.name for t in cfg.targets]
    weights = np.array([t.weight for t in cfg.targets], dtype=np.float64)
    target_means, target_counts = _target_means(cfg, plan)
    dim = target_means.shape[1]
    pre = _preconditioner(cfg, plan, kfac_layout, dim)
    directions = pre.solve(target_means, relative_damping=cfg.influence.relative_damping)
    ids: list[str] = []
    domains: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    tokens: dict[str, int] = {}
    for _, table in _iter_shards(plan, "corpus", cfg.storage):
        feats = datastore.features_to_numpy(table)
        doms = np.asarray(table.column("domain").to_pylist(), dtype=object)
        ids.extend(table.column("id").to_pylist())
        domains.append(doms)
        scores.append(per_example_scores(feats, directions))
        for d, n in zip(doms.tolist(), table.column("n_tokens").to_pylist()):
            tokens[d] = tokens.get(d, 0) + int(n)
    all_domains = np.concatenate(domains) if domains else np.zeros(0, dtype=object)
    all_scores = np.concatenate(scores) if scores else np.zeros((0, len(targets)))
    keep = np.isin(all_domains, np.asarray(order, dtype=object))
    if not keep.all():
        ids = [i for i, k in zip(ids, keep.tolist()) if k]
        all_domains, all_scores = all_domains[keep], all_scores[keep]
    gi = group_influence(all_scores, all_domains, order)
    gi_norm = normalize_per_target(gi, cfg.influence.normalize)
    combined = combine_targets(gi_norm, weights)
    boot: dict = {}
    if cfg.influence.bootstrap > 0:
        boot = bootstrap_influence(all_scores, all_domains, order, weights, n_boot=cfg.influence.bootstrap,
                                   confidence=cfg.influence.confidence, seed=cfg.influence.seed,
                                   normalize=cfg.influence.normalize, extra=extra)
    counts = {d: int((all_domains == d).sum()) for d in order}
    log.info("group influence over %d examples, %d domains, %d targets", len(ids), len(order), len(targets))
    return InfluenceResult(
        domains=order, targets=targets, target_weights=weights / weights.sum(), gi=gi, gi_normalized=gi_norm,
        scores=combined, counts=counts, tokens={d: tokens.get(d, 0) for d in order},
        target_counts=target_counts, example_ids=ids, example_domains=all_domains, example_scores=all_scores,
        preconditioner={"kind": cfg.influence.preconditioner, "relative_damping": cfg.influence.relative_damping,
                        "n": int(len(ids))},
        bootstrap=boot,
    )
