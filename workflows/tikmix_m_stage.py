"""TiKMiX-M: label Dirichlet candidate mixtures with short training probes, regress, choose.

Each candidate mixture w is labelled with the measured change of target loss after a few training
steps from the current checkpoint on batches drawn by w (quality = −ΔL). A ridge regression on
quadratic mixture features plus the TiKMiX-D influence term models cross-domain interactions; the
chosen mixture is the average of the top predicted candidates (RegMix-style simulation).
"""

from __future__ import annotations

import logging

import numpy as np

from cluster.parallel import parallel_map
from cluster.runtime import WorkerLayout
from operators.mixture_regression import (
    MixtureRegressor,
    choose_mixture,
    compare_mixtures,
    sample_dirichlet_mixtures,
)
from operators.model_io import checkpoint_adam_state, load_causal_lm, load_tokenizer
from operators.probing import probe_mixture
from operators.tokenize import prepare_tokenizer
from workflows.config import RunConfig
from workflows.examples import domain_pools, reference_set
from workflows.solvers.base import MixtureProblem
from workflows.plan import Plan

log = logging.getLogger(__name__)


class MixtureProber:
    """Picklable probe job: load the checkpoint once per task, label a chunk of mixtures."""

    def __init__(self, cfg: RunConfig, model_uri: str, domains: list[str], pools: dict, ref_ids, ref_mask):
        self.cfg_data = cfg.model_dump(mode="json")
        self.model_uri = model_uri
        self.domains = domains
        self.pools = pools
        self.ref = (ref_ids, ref_mask)

    def __call__(self, mixtures: list[np.ndarray], device: str) -> list[float]:
        cfg = RunConfig.model_validate(self.cfg_data)
        spec = cfg.mixture.tikmix_m
        loaded = load_causal_lm(self.model_uri, device=device, dtype="float32", storage=cfg.storage,
                                cache_dir=cfg.model.cache_dir)
        adam_state = checkpoint_adam_state(loaded)
        quality = []
        for w in mixtures:
            delta = probe_mixture(loaded.model, self.pools, dict(zip(self.domains, np.asarray(w).tolist())),
                                  spec.probe_steps, spec.probe_batch_size, self.ref[0], self.ref[1], spec.probe,
                                  spec.seed, optimizer_state=adam_state)
            quality.append(-float(delta))  # quality: how much the target loss dropped
        return quality


def run_tikmix_m(cfg: RunConfig, plan: Plan, model_uri: str, problem: MixtureProblem,
                 layout: WorkerLayout) -> tuple[np.ndarray, dict]:
    """Label candidates with probes on Ray tasks (one per worker slot), fit, choose, compare with D."""
    spec = cfg.mixture.tikmix_m
    tokenizer = prepare_tokenizer(load_tokenizer(model_uri, storage=cfg.storage, cache_dir=cfg.model.cache_dir))
    domains = problem.domains
    pools = domain_pools(cfg, plan, tokenizer, per_domain=spec.probe_steps * spec.probe_batch_size,
                         seed=spec.seed, domains=domains)
    ref_ids, ref_mask = reference_set(cfg, plan, tokenizer, total=64, seed=spec.seed, split="validation")
    prober = MixtureProber(cfg, model_uri, domains, pools, ref_ids, ref_mask)

    from workflows.solvers import SOLVERS

    w_d = SOLVERS.build("tikmix_d", cfg.mixture.options.get("tikmix_d")).solve(problem).weights
    candidates = sample_dirichlet_mixtures(problem.prior, spec.candidates, spec.seed, problem.lower,
                                           problem.upper)
    W = np.vstack([candidates, w_d[None, :], problem.prior[None, :]])
    y = np.array(parallel_map(prober, list(W), layout))
    log.info("TiKMiX-M: labelled %d candidate mixtures (quality range %.4f..%.4f)", len(y), y.min(), y.max())
    regressor = MixtureRegressor(influence=problem.scores, domain_names=domains, seed=spec.seed).fit(W, y)
    w_m = choose_mixture(regressor, problem.prior, problem.lower, problem.upper, n_samples=spec.samples,
                         top_k=spec.top_k, seed=spec.seed)
    named = {"tikmix_d": w_d, "tikmix_m": w_m, "reference": problem.prior}
    # D and reference were labelled with the candidates (same probe, same seed); only M is new
    measured = {"tikmix_d": float(y[-2]), "reference": float(y[-1]),
                "tikmix_m": parallel_map(prober, [w_m], layout)[0]}
    rows = compare_mixtures(named, regressor, problem.scores)
    for row in rows:
        row["measured_quality"] = measured[row["name"]]
    report = {
        "domains": domains,
        "candidates": W.tolist(),
        "labels": y.tolist(),
        "regressor": regressor.describe(),
        "comparison": rows,
        "measured_quality": measured,
        "weights": dict(zip(domains, w_m.tolist())),
    }
    return w_m, report
