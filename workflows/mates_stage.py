"""MATES selection: one-step oracle probes → data influence model → score pool on Ray → Gumbel top-k.

Labels are ΔL_ref (reference-set loss change after one optimizer step on the candidate), so lower is
better; the selection keeps each domain's quota (mixture weight × budget) of the lowest predicted ΔL,
by Gumbel-top-k of per-domain standardised scores, computed over the score shards on Ray
(workflows/mates_select.py) without gathering the pool on the driver.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from cluster.parallel import parallel_map
from operators import storage
from operators.influence_model import train_influence_model
from operators.manifest import SelectedDomain, Selection
from operators.model_io import checkpoint_adam_state, load_causal_lm, load_tokenizer
from operators.probing import OneStepProber
from operators.tokenize import prepare_tokenizer
from workflows.config import RunConfig
from workflows.examples import reference_set, sample_rows_per_group, tokenize_table
from workflows.mates_score_shard import ScorerFactory
from workflows.plan import Plan
from workflows.progress import Progress

log = logging.getLogger(__name__)


class OracleProber:
    """Picklable oracle job: one-step probes (checkpoint AdamW state) for a chunk of candidates."""

    def __init__(self, cfg: RunConfig, model_uri: str, ref_ids, ref_mask) -> None:
        self.cfg_data = cfg.model_dump(mode="json")
        self.model_uri = model_uri
        self.ref = (ref_ids, ref_mask)

    def __call__(self, rows: list[tuple], device: str) -> list[float]:
        cfg = RunConfig.model_validate(self.cfg_data)
        loaded = load_causal_lm(self.model_uri, device=device, dtype="float32", storage=cfg.storage,
                                cache_dir=cfg.model.cache_dir)
        prober = OneStepProber(loaded.model, self.ref[0].to(device), self.ref[1].to(device), cfg.mates.probe,
                               optimizer_state=checkpoint_adam_state(loaded))
        return [float(prober.probe(ids[None, :].to(device), mask[None, :].to(device))) for ids, mask in rows]


def train_dim(cfg: RunConfig, plan: Plan, model_uri: str, n_domains: int, layout) -> tuple[bytes, dict]:
    """Oracle labels by one-step probing on a per-domain sample (on Ray tasks), then fit the model."""
    spec = cfg.mates
    tokenizer = prepare_tokenizer(load_tokenizer(model_uri, storage=cfg.storage, cache_dir=cfg.model.cache_dir))
    per_domain = math.ceil(spec.oracle_samples / n_domains)
    cands = sample_rows_per_group(cfg, plan.corpus_tasks(), per_domain, spec.seed + 1)
    ids, mask, _ = tokenize_table(tokenizer, cands, spec.model.max_length)
    reference = spec.reference_target or cfg.targets[0].name
    ref_ids, ref_mask = reference_set(cfg, plan, tokenizer, spec.reference_examples, spec.seed, reference,
                                     split="influence")
    rows = [(ids[i][mask[i].bool()], mask[i][mask[i].bool()]) for i in range(len(ids))]
    labels = np.array(parallel_map(OracleProber(cfg, model_uri, ref_ids, ref_mask), rows, layout))
    trained = train_influence_model(spec.model, ids, mask, labels, vocab_size=len(tokenizer),
                                    pad_token_id=tokenizer.pad_token_id)
    log.info("MATES: %d oracle probes, influence model %s", len(labels), trained.metrics)
    return trained.to_bytes(), {"oracle_probes": int(len(labels)), "reference_target": reference,
                                "label_mean": float(np.mean(labels)), "label_std": float(np.std(labels)),
                                "model_metrics": trained.metrics}


def score_pool(cfg: RunConfig, plan: Plan, model_uri: str, dim_uri: str) -> None:
    from cluster.actor_pool import ShardPool
    from cluster.runtime import worker_layout
    from workflows.featurize_stage import ShardFailures
    from workflows.mates_score_shard import score_done_uri

    tasks = [t for t in plan.corpus_tasks() if not storage.exists(score_done_uri(plan.root, t.shard_id),
                                                                   cfg.storage)]
    total = len(plan.corpus_tasks())
    progress = Progress("mates-score", total, already_done=total - len(tasks),
                        interval_s=cfg.cluster.progress_interval_s)
    if not tasks:
        return
    pool = ShardPool(ScorerFactory(cfg, model_uri, dim_uri), worker_layout(cfg.cluster), cfg.cluster,
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
    from workflows.mates_select import select_distributed, selection_uri

    counts, report = select_distributed(plan.root, [t.shard_id for t in plan.corpus_tasks()], weights,
                                        spec.selection_ratio, spec.temperature, spec.seed, out_dir, cfg.storage,
                                        layout_or_local(cfg.cluster), cfg.cluster.max_task_retries)
    selected = {d: SelectedDomain(uri=selection_uri(out_dir, d), count=n,
                                  pool=report["available"].get(d, 0)) for d, n in sorted(counts.items())}
    params = {"selection_ratio": spec.selection_ratio, "temperature": spec.temperature, "seed": spec.seed,
              "budget": report["budget"], "influence_model_uri": dim_uri, **info}
    return Selection(method="mates", domains=selected, params=params), report
