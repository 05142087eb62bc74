"""TiKMiX-M: probe-labelled local search around TiKMiX-D's answer (docs/ALGORITHMS.md §7).

1. Centre w_D = the ``tikmix_d`` solver's answer on the same problem; candidates = Latin Hypercube
   samples of the box [0.5·w_D, 2·w_D] ∩ bounds (operators/mixture/search.py), plus w_D itself, plus
   exploration mixtures away from it (Dirichlet around the reference, domain-heavy mixtures for domains
   with a positive score), so the search is not confined to the first-order answer's neighbourhood.
2. Labels = −ΔL of short training probes from the checkpoint, scored on the VALIDATION split of the
   targets (never the influence split), ``seeds`` seeds shared by all candidates; budget-scaled pools as
   in the validation stage, drawn afresh for every seed (which examples a probe sees is part of the
   noise). The label noise is measured (operators/mixture/search.label_noise).
3. Ridge regression on full-rank quadratic mixture features with the influence term w·s; held-out (LOO) error
   against the label spread, bootstrap refits for a prediction std. No held-out skill → fall back to w_D.
4. Algorithm 1 (annealed Dirichlet search) inside the box the candidates covered, maximising the lower
   confidence bound mean − κ·std, so the answer never leaves the sampled region.
5. Confirmation: w_M and w_D are re-measured with fresh seeds (shared by both) on the OTHER half of the
   validation examples (steps 2–4 only see one half: cross-fitting); the standard error resamples both the
   seeds and the validation examples (which ~50 target examples a split holds moves mixtures this close
   by more than seed noise does). w_M is returned only when it beats w_D by ``margin`` such standard
   errors, else w_D with ``fell_back: true`` and the reason.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from operators.mixture.explore import dirichlet_around, heavy_mixture, positive_evidence
from operators.mixture.regression import MixtureRegressor
from operators.mixture.search import (
    annealed_search,
    covered_box,
    label_noise,
    latin_hypercube_mixtures,
    paired_gain_examples,
    perturbation_box,
)
from operators.mixture.decision import budget_pool_sizes
from workflows.jobs.examples import ExampleSource, domain_pools, reference_set
from workflows.jobs.probes import MixtureProber, measure
from workflows.run.plan import Plan
from workflows.solvers.base import SOLVERS, MixtureProblem, SolveContext

log = logging.getLogger(__name__)


def _pools(examples: ExampleSource, plan: Plan, problem: MixtureProblem, tokenizer, opts, seed: int) -> dict:
    pools = domain_pools(examples, plan, tokenizer, per_domain=opts.max_pool, seed=seed, domains=problem.domains)
    if not opts.budget_scaled_pools:
        return pools
    sizes = budget_pool_sizes(problem.budget.tokens_available, problem.budget.tokens_next_stage,
                              opts.steps * opts.batch_size, opts.max_pool)
    return {d: (pools[d][0][:n], pools[d][1][:n]) for d, n in zip(problem.domains, sizes.tolist()) if d in pools}


def exploration_mixtures(problem: MixtureProblem, opts) -> list[np.ndarray]:
    """Labelled mixtures beyond the box around w_D (operators/mixture/explore.py): ``explore`` Dirichlet
    mixtures around the reference and, with ``explore_heavy``, one domain-heavy mixture per domain with a
    positive score. The search then covers the region they span too."""
    out = list(dirichlet_around(problem.reference, opts.explore, opts.seed + 1, problem.lower, problem.upper))
    if opts.explore_heavy:
        out += [heavy_mixture(problem.reference, k, 0.65, problem.lower, problem.upper)
                for k in np.flatnonzero(positive_evidence(problem.scores))]
    return out


def search_mixture(W: np.ndarray, y: np.ndarray, scores: np.ndarray, domains: list[str], start: np.ndarray,
                   opts) -> tuple[np.ndarray | None, MixtureRegressor, dict]:
    """Fit, check held-out skill, search the covered box by LCB → (w_M or None when unskilled, fit, report)."""
    reg = MixtureRegressor(influence=scores, domain_names=domains, seed=opts.seed).fit(W, y)
    reg.bootstrap(opts.bootstrap, opts.seed)
    info = reg.describe()
    lo, hi = covered_box(W)
    report = {"regressor": info, "covered_box": {"lower": lo.tolist(), "upper": hi.tolist()}}
    if not info["cv_r2"] > opts.min_cv_r2:
        return None, reg, report
    w_m, trace = annealed_search(lambda X: reg.lower_bound(X, opts.kappa), start, lo, hi, opts.iterations,
                                 opts.samples, opts.alpha_max, opts.alpha_min, opts.top_k, opts.seed)
    mean, std = reg.predict_std(np.vstack([start, w_m]))
    report.update({"search": trace, "predicted": {"tikmix_d": [float(mean[0]), float(std[0])],
                                                  "tikmix_m": [float(mean[1]), float(std[1])]}})
    return w_m, reg, report


def run_tikmix_m(ctx: SolveContext, problem: MixtureProblem, opts) -> tuple[np.ndarray, dict]:
    """Label, fit, search, confirm (module docstring); returns (weights, report section)."""
    t0 = time.monotonic()
    domains = problem.domains
    plan, layout = ctx.plan, ctx.layout
    w_d = SOLVERS.configured("tikmix_d", ctx.options).solve(problem).weights
    box_lo, box_hi = perturbation_box(w_d, problem.lower, problem.upper, opts.scale_low, opts.scale_high)
    W = np.vstack([w_d[None, :], latin_hypercube_mixtures(box_lo, box_hi, opts.candidates, opts.seed),
                   *exploration_mixtures(problem, opts)])
    tokenizer = ctx.model.tokenizer()
    draw = opts.seed + ctx.draw_seed  # fresh examples and probe seeds per checkpoint (validation.rotate)
    ref = reference_set(ctx.examples, plan, tokenizer, total=opts.reference_examples, seed=draw,
                        split="validation_select")  # validation confirms on the other half
    # cross-fitting: the search sees one half of the validation examples, the confirmation the other half,
    # so a mixture that only fits the particular examples it was chosen on does not pass
    search_ref, confirm_ref = (ref[0][0::2], ref[1][0::2]), (ref[0][1::2], ref[1][1::2])
    seeds = [draw + i for i in range(opts.seeds)]
    fresh = [draw + 1000 + i for i in range(opts.confirm_seeds)]
    pools = {s: _pools(ctx.examples, plan, problem, tokenizer, opts, s) for s in seeds + fresh}
    prober = MixtureProber(ctx.model, domains, pools, search_ref, opts.steps, opts.batch_size, opts.probe)
    delta = measure(prober, list(W), seeds, layout)
    y = -delta.mean(axis=1)  # quality: how much the validation loss dropped
    noise = label_noise(delta)
    log.info("TiKMiX-M: %d candidates × %d seeds; label std %.4f, label noise %.4f (seed std %.4f)", len(W),
             len(seeds), noise["label_std"], noise["label_noise_std"], noise["seed_std"])
    w_m, reg, fit = search_mixture(W, y, problem.scores, domains, w_d, opts)
    report: dict = {"domains": domains, "tikmix_d": dict(zip(domains, w_d.tolist())),
                    "box": {"lower": box_lo.tolist(), "upper": box_hi.tolist()},
                    "candidates": W.tolist(), "labels": y.tolist(), "label_deltas": delta.tolist(),
                    "seeds": seeds, "steps": opts.steps, "batch_size": opts.batch_size,
                    "pool_sizes": {d: int(p[0].shape[0]) for d, p in pools[seeds[0]].items()},
                    "split": "validation_select",
                    "reference_examples": {"search": int(search_ref[0].shape[0]),
                                           "confirm": int(confirm_ref[0].shape[0])},
                    "label_noise": noise, **fit}
    if w_m is None:
        report.update({"fell_back": True, "reason": (
            f"the regression has no held-out skill (leave-one-out R² {fit['regressor']['cv_r2']:.3f} <= "
            f"{opts.min_cv_r2}; LOO RMSE {reg.cv_rmse:.4f} vs label std {noise['label_std']:.4f}, label noise "
            f"{noise['label_noise_std']:.4f}): the probes cannot rank mixtures this close; returning TiKMiX-D")})
    else:
        confirm = MixtureProber(ctx.model, domains, pools, confirm_ref, opts.steps, opts.batch_size,
                                opts.probe, per_example=True)
        conf = measure(confirm, [w_d, w_m], fresh, layout)  # (2, seeds, examples) summed-token ΔL
        tokens = confirm_ref[1][:, 1:].sum(dim=1).double().numpy()
        row = paired_gain_examples(conf[0], conf[1], tokens, seed=opts.seed)
        fell_back = not row["z"] > opts.margin
        per_seed = conf.sum(axis=2) / tokens.sum()
        report.update({"confirmation": {"seeds": fresh, "delta": {"tikmix_d": per_seed[0].tolist(),
                                                                   "tikmix_m": per_seed[1].tolist()},
                                        **row, "margin": opts.margin},
                       "tikmix_m": dict(zip(domains, w_m.tolist())), "fell_back": fell_back,
                       "reason": (f"w_M {'did not beat' if fell_back else 'beat'} w_D on held-out validation "
                                  f"examples and fresh seeds and pools: gain {row['gain']:+.4f} nats "
                                  f"({row['z']:+.2f} standard errors over seeds and validation examples, "
                                  f"{row['se_seeds']:.4f} nats over seeds alone; margin {opts.margin})"
                                  + ("; returning TiKMiX-D" if fell_back else ""))})
    chosen = w_d if report["fell_back"] else w_m
    report["wall_s"] = round(time.monotonic() - t0, 2)
    log.info("TiKMiX-M: %s", report["reason"])
    return chosen, report
