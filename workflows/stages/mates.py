"""MATES selection: one-step oracle probes → data influence model → score pool on Ray → Gumbel top-k.

Labels are ΔL_ref (reference-set loss change after one optimizer step on the candidate), so lower is
better; the selection keeps each domain's quota (mixture weight × budget) of the lowest predicted ΔL,
by Gumbel-top-k of per-domain standardised scores, computed over the score shards on Ray
(workflows/jobs/mates_select.py) without gathering the pool on the driver.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import stats
from scipy.stats import spearmanr

from cluster.parallel import parallel_map
from operators.io import storage
from operators.selection.influence_model import train_influence_model
from operators.selection.influence_ridge import fit_ridge_influence, lm_features
from operators.manifest.schema import SelectedDomain, Selection
from operators.model.loading import ModelSource, checkpoint_adam_state
from operators.training.probing import OneStepProber, ProbeSpec
from operators.model.tiny_lm import small_model_threads
from workflows.config import RunConfig
from workflows.jobs.examples import ExampleSource, reference_set, sample_rows_per_group, tokenize_table
from workflows.jobs.mates_score_shard import ScoreJob, ScorerFactory
from workflows.stages.base import RunContext, Stage, published_weights
from workflows.stages.featurize import model_source
from workflows.stages.publish import manifest_dir
from workflows.run.plan import Plan
from cluster.progress import Progress

log = logging.getLogger(__name__)

RANDOM_TEMPERATURE = 1e9  # Gumbel-top-k temperature that makes the selection random (scores ≪ noise)


class OracleProber:
    """Picklable oracle job: one-step probes (checkpoint AdamW state) for a chunk of candidates.

    Each candidate is probed against two disjoint halves of the reference set, so every label comes
    with a second, independent measurement of the same quantity (split-half label noise).
    """

    def __init__(self, model: ModelSource, probe: ProbeSpec, ref_ids, ref_mask) -> None:
        self.model, self.probe = model, probe
        self.ref = (ref_ids, ref_mask)

    def __call__(self, rows: list[tuple], device: str) -> list[tuple[float, float]]:
        loaded = self.model.load(device, dtype="float32")
        adam = checkpoint_adam_state(loaded, self.model.optimizer_state)
        ids, mask = self.ref[0].to(device), self.ref[1].to(device)
        halves = [OneStepProber(loaded.model, ids[h::2], mask[h::2], self.probe, optimizer_state=adam)
                  for h in (0, 1)]
        return [tuple(float(p.probe(r[None, :].to(device), m[None, :].to(device))) for p in halves)
                for r, m in rows]


def label_noise(a: np.ndarray, b: np.ndarray, domains: np.ndarray) -> dict:
    """Split-half agreement of two independent oracle measurements: Spearman r and the Spearman-Brown
    reliability 2r/(1+r) of their mean (sqrt bounds any model's correlation with the labels), overall and
    within domains (labels centred per domain: what selection inside quotas can use)."""
    def half(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        r = float(spearmanr(x, y)[0]) if np.ptp(x) > 0 and np.ptp(y) > 0 else 0.0
        return r, (2 * r / (1 + r) if r > 0 else 0.0)

    r, rel = half(a, b)
    rw, relw = half(*(np.concatenate([x[domains == d] - x[domains == d].mean() for d in np.unique(domains)])
                      for x in (a, b)))
    return {"split_half_spearman": r, "reliability": rel, "max_attainable_spearman": float(np.sqrt(rel)),
            "split_half_spearman_within_domain": rw, "reliability_within_domain": relw,
            "half_diff_std": float(np.std(a - b))}


def _fit_ridge(cfg: RunConfig, model_uri: str, ids, mask, labels: np.ndarray, domains: np.ndarray):
    spec = cfg.mates.model
    loaded = model_source(cfg, model_uri).load("cpu", dtype="float32")
    with small_model_threads(loaded.model):
        X = lm_features(loaded.model, ids, mask)
    return fit_ridge_influence(X, labels, model_uri, spec.cv_folds, spec.seed, spec.min_spearman, spec.max_p,
                               groups=domains)


def _fit_bert(cfg: RunConfig, tokenizer, ids, mask, labels: np.ndarray):
    spec = cfg.mates.model
    trained = train_influence_model(spec, ids, mask, labels, vocab_size=len(tokenizer),
                                    pad_token_id=tokenizer.pad_token_id)
    m = trained.metrics
    n_val, rho = m["n_val"], m["val_spearman"]
    p = None
    if np.isfinite(rho) and n_val > 2:
        t = rho * np.sqrt((n_val - 2) / max(1e-12, 1 - rho**2))
        p = float(stats.t.sf(t, n_val - 2))
    m.update({"model": "bert", "cv_spearman": rho, "cv_spearman_p": p,
              "usable": bool(p is not None and rho > spec.min_spearman and p < spec.max_p)})
    return trained


def train_dim(cfg: RunConfig, plan: Plan, model_uri: str, n_domains: int, layout) -> tuple[bytes, dict]:
    """Oracle labels by one-step probing on a per-domain sample (on Ray tasks), then fit the model."""
    spec = cfg.mates
    source = model_source(cfg, model_uri)
    examples = ExampleSource.of(cfg)
    tokenizer = source.tokenizer()
    per_domain = math.ceil(spec.oracle_samples / n_domains)
    cands = sample_rows_per_group(examples, plan.corpus_tasks(), per_domain, spec.seed + 1)
    ids, mask, keep = tokenize_table(tokenizer, cands, spec.model.max_length)
    domains = np.array(cands.column("domain").to_pylist())[keep]
    reference = spec.reference_target or cfg.targets[0].name
    ref_ids, ref_mask = reference_set(examples, plan, tokenizer, spec.reference_examples, spec.seed, reference,
                                     split="influence")
    rows = [(ids[i][mask[i].bool()], mask[i][mask[i].bool()]) for i in range(len(ids))]
    halves = np.array(parallel_map(OracleProber(source, spec.probe, ref_ids, ref_mask), rows, layout))
    n_tok = np.array([int(ref_mask[h::2][:, 1:].sum()) for h in (0, 1)], dtype=np.float64)
    labels = halves @ (n_tok / n_tok.sum())  # = ΔL on the whole reference set (token-weighted)
    noise = label_noise(halves[:, 0], halves[:, 1], domains)
    if spec.model.kind == "lm_ridge":
        model = _fit_ridge(cfg, model_uri, ids, mask, labels, domains)
    else:
        model = _fit_bert(cfg, tokenizer, ids, mask, labels)
    metrics = model.metrics
    log.info("MATES: %d oracle probes (split-half Spearman %.3f), %s influence model CV Spearman %.3f, "
             "within domains %s: %s", len(labels), noise["split_half_spearman"], metrics["model"],
             metrics["cv_spearman"], metrics.get("cv_spearman_within_group"),
             "usable" if metrics["usable"] else "NOT usable: selection falls back to random within quotas")
    return model.to_bytes(), {"oracle_probes": int(len(labels)), "reference_target": reference,
                              "reference_examples": int(ref_ids.shape[0]), "label_mean": float(np.mean(labels)),
                              "label_std": float(np.std(labels)), "label_noise": noise,
                              "usable": metrics["usable"], "model_metrics": metrics}


def score_pool(cfg: RunConfig, plan: Plan, model_uri: str, dim_uri: str) -> None:
    from cluster.actor_pool import ShardPool
    from cluster.runtime import worker_layout
    from workflows.stages.featurize import ShardFailures
    from workflows.jobs.mates_score_shard import score_done_uri

    tasks = [t for t in plan.corpus_tasks() if not storage.exists(score_done_uri(plan.root, t.shard_id),
                                                                   cfg.storage)]
    total = len(plan.corpus_tasks())
    progress = Progress("mates-score", total, already_done=total - len(tasks),
                        interval_s=cfg.cluster.progress_interval_s)
    if not tasks:
        return
    job = ScoreJob(ExampleSource.of(cfg), model_source(cfg, model_uri), dim_uri, cfg.mates.model.max_length,
                   plan.root)
    pool = ShardPool(ScorerFactory(job), worker_layout(cfg.cluster), cfg.cluster,
                     plan.run_id, name="mates")
    try:
        pool.start()
        result = pool.run(tasks, progress)
    finally:
        pool.shutdown()
    if result.failures:
        raise ShardFailures(f"MATES scoring failed for shards {sorted(result.failures)}: {result.failures}")


def run_mates(cfg: RunConfig, plan: Plan, model_uri: str, weights: dict[str, float],
              out_dir: str) -> tuple[Selection, dict]:
    spec = cfg.mates
    dim_uri = storage.join(plan.root, "mates", "influence_model.pt")
    info_uri = storage.join(plan.root, "mates", "influence_model.json")
    if storage.exists(dim_uri, cfg.storage) and storage.exists(info_uri, cfg.storage):
        info = storage.read_json(info_uri, cfg.storage)
    else:
        from cluster.runtime import worker_layout

        data, info = train_dim(cfg, plan, model_uri, len(weights), worker_layout(cfg.cluster))
        storage.write_bytes_atomic(dim_uri, data, cfg.storage)
        storage.write_json_atomic(info_uri, info, cfg.storage)
    score_pool(cfg, plan, model_uri, dim_uri)
    from cluster.runtime import layout_or_local
    from workflows.jobs.mates_select import select_distributed, selection_uri

    usable = bool(info.get("usable", True))
    # no usable signal: a temperature this high leaves only the Gumbel noise, i.e. random within the quotas
    temperature = spec.temperature if usable else RANDOM_TEMPERATURE
    counts, report = select_distributed(plan.root, [t.shard_id for t in plan.corpus_tasks()], weights,
                                        spec.selection_ratio, temperature, spec.seed, out_dir, cfg.storage,
                                        layout_or_local(cfg.cluster), cfg.cluster.max_task_retries)
    report.update({"usable": usable, "selection": "influence model" if usable else
                   "random within quotas (influence model not usable)"})
    selected = {d: SelectedDomain(uri=selection_uri(out_dir, d), count=n,
                                  pool=report["available"].get(d, 0)) for d, n in sorted(counts.items())}
    params = {"selection_ratio": spec.selection_ratio, "temperature": temperature, "seed": spec.seed,
              "budget": report["budget"], "influence_model_uri": dim_uri, **info}
    return Selection(method="mates", domains=selected, params=params), report


class SelectStage(Stage):
    """MATES: select examples inside each domain's quota of the published mixture (``mates.enabled``)."""

    name = "select"

    def enabled(self, ctx: RunContext) -> bool:
        return ctx.cfg.mates.enabled

    def run(self, ctx: RunContext) -> None:
        weights = dict(zip(ctx.problem.domains, published_weights(ctx)[0].tolist()))
        ctx.selection, ctx.report["mates"] = run_mates(ctx.cfg, ctx.plan, ctx.model_uri, weights,
                                                       manifest_dir(ctx.cfg))
        ctx.save_record(self.name, {"selection": ctx.selection.model_dump(mode="json"),
                                    "report": ctx.report["mates"]})

    def load(self, ctx: RunContext) -> None:
        record = ctx.load_record(self.name)
        ctx.selection, ctx.report["mates"] = Selection.model_validate(record["selection"]), record["report"]
