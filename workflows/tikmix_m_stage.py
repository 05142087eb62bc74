"""TiKMiX-M: label Dirichlet candidate mixtures with short training probes, regress, choose.

Each candidate mixture w is labelled with the measured change of target loss after a few training
steps from the current checkpoint on batches drawn by w (quality = −ΔL). A ridge regression on
quadratic mixture features plus the TiKMiX-D influence term models cross-domain interactions; the
chosen mixture is the average of the top predicted candidates (RegMix-style simulation).
"""

from __future__ import annotations

import logging

import numpy as np

from operators.mixture_regression import (
    MixtureRegressor,
    choose_mixture,
    compare_mixtures,
    sample_dirichlet_mixtures,
)
from operators.model_io import load_causal_lm
from operators.probing import probe_mixture
from operators.tokenize import prepare_tokenizer
from workflows.aggregate import InfluenceResult
from workflows.config import RunConfig
from workflows.examples import domain_pools, reference_set
from workflows.mates_stage import checkpoint_adam_state
from workflows.mixture_stage import MixtureProblem
from workflows.plan import Plan

log = logging.getLogger(__name__)


def run_tikmix_m(cfg: RunConfig, plan: Plan, model_uri: str, infl: InfluenceResult,
                 problem: MixtureProblem) -> tuple[np.ndarray, dict]:
    spec = cfg.mixture.tikmix_m
    loaded = load_causal_lm(model_uri, device="cpu", dtype="float32", storage=cfg.storage,
                            cache_dir=cfg.model.cache_dir)
    tokenizer = prepare_tokenizer(loaded.tokenizer)
    domains = infl.domains
    pools = domain_pools(cfg, plan, tokenizer, per_domain=spec.probe_steps * spec.probe_batch_size,
                         seed=spec.seed, domains=domains)
    ref_ids, ref_mask = reference_set(cfg, plan, tokenizer, total=64, seed=spec.seed)
    adam_state = checkpoint_adam_state(loaded)

    def measure(w: np.ndarray) -> float:
        delta = probe_mixture(loaded.model, pools, dict(zip(domains, w.tolist())), spec.probe_steps,
                              spec.probe_batch_size, ref_ids, ref_mask, spec.probe, spec.seed,
                              optimizer_state=adam_state)
        return -float(delta)  # quality: how much the target loss dropped

    w_d = problem.solve(infl.scores)
    candidates = sample_dirichlet_mixtures(problem.w_ref, spec.candidates, spec.seed, problem.lower,
                                           problem.upper)
    W = np.vstack([candidates, w_d[None, :], problem.w_ref[None, :]])
    y = np.array([measure(w) for w in W])
    log.info("TiKMiX-M: labelled %d candidate mixtures (quality range %.4f..%.4f)", len(y), y.min(), y.max())
    regressor = MixtureRegressor(influence=infl.scores, domain_names=domains, seed=spec.seed).fit(W, y)
    w_m = choose_mixture(regressor, problem.w_ref, problem.lower, problem.upper, n_samples=spec.samples,
                         top_k=spec.top_k, seed=spec.seed)
    named = {"tikmix_d": w_d, "tikmix_m": w_m, "reference": problem.w_ref}
    measured = {name: measure(w) for name, w in named.items()}
    rows = compare_mixtures(named, regressor, infl.scores)
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
