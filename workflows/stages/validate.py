"""Validate before publishing: train short probes from the checkpoint on each candidate mixture.

Candidates: the reference (previous mixture, else the prior), every solver's answer, points on the line
between the reference and the primary solver's answer, the baselines, and exploration mixtures away
from the influence answer (workflows/stages/explore.py: Dirichlet around the reference, domain-heavy
mixtures, each target's own optimum). Every candidate is trained for ``validation.steps`` steps ×
``validation.seeds`` seeds (Ray tasks, one per worker slot; the checkpoint's AdamW state is continued
when it has one) and scored on the VALIDATION split of the targets, which influence never saw, at
several points of the probe (``horizon_fractions``). A surrogate fitted on those results proposes a
second round. Each candidate's gain is reported at the probe horizon (measured) and at the stage
horizon (extrapolated, operators/mixture/horizon.py). The best candidates and the reference are then
re-measured on fresh seeds (``confirm_seeds``), and the best of those is published only if it beats
the reference there by ``margin`` standard errors. Several targets are combined as
``target_balance`` says. Probe pools are budget-scaled by default, so a domain that the next stage
would repeat 10 times is repeated about 10 times in the probe too. The decision rule is in
operators/mixture/decision.py.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
from scipy import stats

import torch
import torch.nn.functional as F

from operators.mixture.decision import budget_pool_sizes, decide, predicted_vs_measured
from operators.mixture.horizon import (
    extrapolate,
    extrapolation_weights,
    probe_points,
    stage_interval,
    stage_steps,
)
from workflows.config import RunConfig, ValidationSpec
from workflows.jobs.examples import ExampleSource, domain_pools, reference_set
from workflows.jobs.probes import MixtureProber, ProbeCache, measure_trajectories
from operators.io import storage
from operators.io.splits import SplitName
from workflows.run.keys import BUILTIN_SCHEME, checkpoint_identity, digest
from workflows.stages.base import RunContext, Stage
from workflows.stages.explore import (ExploreInput, exploration_candidates, surrogate_round, surrogate_weight_ci,
                                      trajectory_round)
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


def labelled_reference(cfg: RunConfig, plan: Plan, tokenizer, total: int, seed: int,
                       split: SplitName = "validation") -> tuple[tuple[torch.Tensor, torch.Tensor], np.ndarray]:
    """A validation reference set (the same examples as ``reference_set`` mixes by target weight, from
    ``split``: the validation part or one of its halves) and each example's target index."""
    src = ExampleSource.of(cfg)
    weights = np.array([t.weight for t in cfg.targets], dtype=np.float64)
    counts = np.maximum(1, np.round(total * weights / weights.sum()).astype(int))
    parts = [reference_set(src, plan, tokenizer, total=int(n), seed=seed, target=t.name, split=split)
             for t, n in zip(cfg.targets, counts.tolist())]
    return _stack(parts, tokenizer.pad_token_id)


def _stack(parts: list[tuple[torch.Tensor, torch.Tensor]], pad: int) -> tuple[tuple[torch.Tensor, torch.Tensor], np.ndarray]:
    """Right-pad (ids, mask) blocks to one width and concatenate; labels = the block index of each row."""
    width = max(i.shape[1] for i, _ in parts)
    ids = torch.cat([F.pad(i, (0, width - i.shape[1]), value=pad) for i, _ in parts])
    mask = torch.cat([F.pad(m, (0, width - m.shape[1]), value=0) for _, m in parts])
    labels = np.concatenate([np.full(i.shape[0], v) for v, (i, _) in enumerate(parts)])
    return (ids, mask), labels


def rotation_seed(cfg: RunConfig, model_uri: str | None, spec: ValidationSpec) -> int:
    """The seed of the validation examples and probe seeds: ``spec.seed``, or with ``rotate=checkpoint``
    a hash of it and the checkpoint's identity, so each new checkpoint gets its own draw and a re-analysis
    of the same checkpoint the same one."""
    if spec.rotate == "none":
        return spec.seed
    identity = checkpoint_identity(cfg, None if model_uri is None or model_uri.startswith(BUILTIN_SCHEME)
                                   else model_uri)
    return int(digest({"seed": spec.seed, "checkpoint": identity}), 16) % (2**31 - 1)


def validation_reference(cfg: RunConfig, plan: Plan, tokenizer, spec: ValidationSpec, seed: int
                         ) -> tuple[tuple[torch.Tensor, torch.Tensor], np.ndarray, np.ndarray, np.ndarray | None]:
    """(reference set, target index per example, select indices, confirm indices or None). With a
    confirmation the two halves come from the two hash halves of the validation split
    (operators/io/splits.py), so the examples that choose and those that confirm are disjoint by
    construction (TiKMiX-M also chooses on the select half)."""
    if not spec.confirm_seeds:
        ref, labels = labelled_reference(cfg, plan, tokenizer, spec.reference_examples, seed)
        return ref, labels, np.arange(labels.size), None
    half = max(1, spec.reference_examples // 2)
    (si, sm), sl = labelled_reference(cfg, plan, tokenizer, half, seed, "validation_select")
    (ci, cm), cl = labelled_reference(cfg, plan, tokenizer, half, seed, "validation_confirm")
    (ids, mask), block = _stack([(si, sm), (ci, cm)], tokenizer.pad_token_id)
    labels = np.concatenate([sl, cl])
    return (ids, mask), labels, np.flatnonzero(block == 0), np.flatnonzero(block == 1)


def _rows(ref: tuple[torch.Tensor, torch.Tensor], idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference examples ``idx`` of an (ids, mask) set."""
    index = torch.as_tensor(np.asarray(idx), dtype=torch.long)
    return ref[0][index], ref[1][index]


@dataclass
class Objective:
    """Turns per-example summed losses into the decision's ΔL (nats; lower is better), see
    :func:`objective_values`."""

    tokens: np.ndarray  # (n,) target tokens per reference example
    labels: np.ndarray  # (n,) target index per example
    weights: np.ndarray  # (V,) target weights, sum 1
    balance: str = "nats"

    def subset(self, idx: np.ndarray) -> Objective:
        """The same objective over a subset of the reference examples."""
        return Objective(self.tokens[idx], self.labels[idx], self.weights, self.balance)

    def per_target(self, before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ΔL per target (..., V), base loss per target (V,)) from before (..., n) and after (..., n)."""
        V = self.weights.size
        onehot = (self.labels[:, None] == np.arange(V)[None, :]).astype(np.float64)  # (n, V)
        tok_v = self.tokens @ onehot
        delta = ((after - before) @ onehot) / tok_v
        base = (before.reshape(-1, before.shape[-1])[0] @ onehot) / tok_v
        return delta, base

    def __call__(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """One target: the token-weighted mean change over the reference set. Several: Σ_v λ_v ΔL_v (each
        target's own per-token change), or with ``relative`` Σ_v λ_v ΔL_v / L_v × Σ_v λ_v L_v."""
        if self.weights.size == 1:
            return (after - before).sum(axis=-1) / self.tokens.sum()
        delta, base = self.per_target(before, after)
        if self.balance == "relative":
            return (delta / base) @ self.weights * float(base @ self.weights)
        return delta @ self.weights


def _measure(prober: MixtureProber, objective: Objective, kept: dict, seeds: list[int], layout,
             cache: ProbeCache | None = None, examples: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """(ΔL (M, S, P) by the objective, per-target ΔL (M, S, P, V), raw (before (M, S, n), after (M, S, P, n)));
    ``examples``: indices of the reference examples to score on (the objective must be that subset's)."""
    before, after = measure_trajectories(prober, [w for w, _ in kept.values()], seeds, layout, cache)
    if examples is not None:
        before, after = before[..., examples], after[..., examples]
    b = before[:, :, None, :]
    values = objective(b, after)
    per_target, _ = objective.per_target(b, after)
    return values, per_target, (before, after)


def resampled_values(raw: tuple[np.ndarray, np.ndarray], objective: Objective, n_boot: int, seed: int = 0):
    """Yields the objective's ΔL (M, S, P) on ``n_boot`` two-way resamples of ``raw``: seeds and validation
    examples both redrawn, because which few target examples a split holds moves a gain by more than seed
    noise. A replicate without some target's examples (non-finite) is skipped."""
    before, after = raw
    s, n = before.shape[1], before.shape[2]
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        si, ei = rng.integers(0, s, s), rng.integers(0, n, n)
        sub = Objective(objective.tokens[ei], objective.labels[ei], objective.weights, objective.balance)
        with np.errstate(divide="ignore", invalid="ignore"):
            vals = sub(before[:, si][:, :, None, ei], after[:, si][:, :, :, ei])
        if np.all(np.isfinite(vals)):
            yield vals


def stage_rows(raw: tuple[np.ndarray, np.ndarray], objective: Objective, names: list[str], coef: np.ndarray,
               confidence: float, n_boot: int = 400, seed: int = 0) -> dict[str, dict]:
    """Per candidate, the stage-horizon gain over the reference and its interval
    (operators/mixture/horizon.stage_interval) from a two-way bootstrap (:func:`resampled_values`)."""
    r = names.index("reference")
    means = [vals.mean(axis=1) for vals in resampled_values(raw, objective, n_boot, seed)]  # each (M, P)
    G = np.array([m[r][None, :] - m for m in means])
    return {name: stage_interval(G[:, m, :], coef, confidence) for m, name in enumerate(names)}


def gain_replicates(raw: tuple[np.ndarray, np.ndarray], objective: Objective, reference: int,
                    coef: np.ndarray | None, n_boot: int, seed: int = 0) -> np.ndarray:
    """(B, M) gains over the reference on two-way resamples (:func:`resampled_values`) of ``raw``, at the
    probe's last point (``coef`` None) or extrapolated by ``coef``: the first round as it might have been
    measured."""
    reps = [decision_gains(vals, reference, coef) for vals in resampled_values(raw, objective, n_boot, seed)]
    return np.array(reps).reshape(-1, raw[0].shape[0])


def decision_gains(values: np.ndarray, reference: int, coef: np.ndarray | None) -> np.ndarray:
    """(M,) seed-mean gains over the reference from ΔL ``values`` (M, S, P), at the probe's last point
    (``coef`` None) or extrapolated by ``coef``."""
    at = (values[:, :, -1] if coef is None else extrapolate(values, coef)).mean(axis=1)
    return at[reference] - at


def probe_rows(raw: tuple[np.ndarray, np.ndarray], objective: Objective, names: list[str], confidence: float,
               blocks: int = 12) -> dict[str, dict]:
    """Per candidate, the probe-horizon gain over the reference and a t-interval whose standard error has
    two parts: seed noise (the spread of the per-seed gains, each candidate's own, so a candidate far from
    the reference gets the wider interval its seeds imply) and which validation examples were drawn (a
    delete-one-block jackknife over the examples). Degrees of freedom by Welch–Satterthwaite."""
    before, after = raw
    s, n = before.shape[1], before.shape[2]
    r = names.index("reference")

    def gains(idx: np.ndarray) -> np.ndarray:  # (M, S) gain per candidate and seed on examples idx
        vals = objective.subset(idx)(before[..., idx][:, :, None, :], after[..., -1:, idx])[:, :, 0]
        return vals[r][None, :] - vals

    every = np.arange(n)
    per_seed = gains(every)
    k = max(2, min(blocks, n))
    jack = np.array([gains(every[every % k != b]).mean(axis=1) for b in range(k)])  # (K, M)
    out = {}
    for m, name in enumerate(names):
        g = float(per_seed[m].mean())
        a = float(per_seed[m].var(ddof=1) / s) if s > 1 else 0.0
        b = float((k - 1) / k * ((jack[:, m] - jack[:, m].mean()) ** 2).sum())
        se = math.sqrt(a + b)
        denom = (a * a / (s - 1) if s > 1 else 0.0) + b * b / (k - 1)
        df = (a + b) ** 2 / denom if denom > 0 else float("inf")
        t = float(stats.t.ppf((1 + confidence) / 2, df)) if np.isfinite(df) else float(stats.norm.ppf((1 + confidence) / 2))
        out[name] = {"gain": g, "ci": [g - t * se, g + t * se], "se": se, "df": df,
                     "se_seeds": math.sqrt(a), "se_examples": math.sqrt(b)}
    return out


def _horizon_rows(decision: dict, stage: dict, points: list[int], used: float) -> None:
    """Put the stage-horizon gain and interval beside each candidate's probe-horizon gain."""
    for name, row in decision["candidates"].items():
        st = stage.get(name)
        if st is not None:
            row.update({"stage_gain": st["gain"], "stage_ci": st["ci"],
                        "stage_models": {k: st[k] for k in ("flat", "log_linear", "reversed")}})
    decision["horizons"] = {
        "probe_steps": points[-1], "probe_points": points, "stage_steps": used,
        "probe_label": f"probe-horizon gain ({points[-1]}-step probes, measured)",
        "stage_label": (f"stage-horizon gain (extrapolated to {used:.0f} steps from {points[-1]}-step probes "
                        f"measured at steps {points})"),
        "stage_model": ("the probe's log-linear trend may continue, stop or reverse over the stage: the "
                        "interval spans all three, over seeds and validation examples")}


def run_validation(cfg: RunConfig, plan: Plan, model_uri: str, problem: MixtureProblem,
                   solved: dict[str, np.ndarray], baselines: dict[str, np.ndarray], primary: str,
                   layout, score_high: np.ndarray | None = None) -> dict:
    """Measure every candidate; return the report section with the decision (see module docstring)."""
    spec = cfg.mixture.validation
    t0 = time.monotonic()
    base = build_candidates(spec, problem, solved, baselines, primary)
    inp = ExploreInput(problem, spec.explore, primary, cfg.mixture.options, score_high, spec.seed)
    explored = exploration_candidates(inp, base)
    kept, alias = dedupe({**base, **explored})
    model = model_source(cfg, model_uri)
    tokenizer = model.tokenizer()
    phases: dict[str, float] = {}
    lap = time.monotonic()

    def phase(name: str) -> None:
        nonlocal lap
        now = time.monotonic()
        phases[name] = round(now - lap, 2)
        lap = now

    pools, pool_sizes = _pools(cfg, plan, problem, tokenizer)
    draw = rotation_seed(cfg, model_uri, spec)
    ref, labels, select_idx, confirm_idx = validation_reference(cfg, plan, tokenizer, spec, draw)
    full_objective = Objective(ref[1][:, 1:].sum(dim=1).double().numpy(), labels, problem.target_weights,
                               spec.target_balance)
    objective = full_objective.subset(select_idx)
    seeds = [draw + i for i in range(spec.seeds)]
    fresh = [draw + 1000 + i for i in range(spec.confirm_seeds)]
    points = probe_points(spec.steps, spec.horizon_fractions)
    horizon = stage_steps(problem.budget.tokens_next_stage, spec.batch_size, cfg.featurize.max_length)
    coef, used = extrapolation_weights(points, horizon, spec.horizon_max_ratio)
    # each probe is scored only on the examples its round uses (the select half, or the confirm half)
    prober = MixtureProber(model, problem.domains, {s: pools for s in seeds}, _rows(ref, select_idx), spec.steps,
                           spec.batch_size, spec.probe, points=points)
    probe_root = storage.join(plan.store or plan.root, "probes")
    cache = ProbeCache(probe_root, cfg.storage, prober) if spec.cache_probes else None
    phase("examples")
    values, per_target, raw = _measure(prober, objective, kept, seeds, layout, cache)
    phase("first_round")
    rounds = {"first": len(kept)}
    surrogate_report: dict = {"fitted": False, "reason": "explore.surrogate = 0"}
    first_W = np.array([w for w, _ in kept.values()])
    extra, trajectory_report = trajectory_round(inp, first_W, per_target, coef, used)
    if spec.explore.surrogate > 0:
        r, horizon_coef = list(kept).index("reference"), None if spec.decide_at == "probe" else coef
        proposed, surrogate_report = surrogate_round(inp, first_W, decision_gains(values, r, horizon_coef))
        if proposed and spec.explore.surrogate_ci_replicates:
            reps = gain_replicates(raw, objective, r, horizon_coef, spec.explore.surrogate_ci_replicates,
                                   seed=spec.seed + 2)
            surrogate_report["weight_ci"] = surrogate_weight_ci(inp, first_W, reps, proposed, 0.9)
        extra = {**extra, **proposed}
    if extra:
        extra, _ = dedupe({**kept, **extra})
        extra = {n: v for n, v in extra.items() if n not in kept}
        if extra:
            v2, t2, raw2 = _measure(prober, objective, extra, seeds, layout, cache)
            kept.update(extra)
            values, per_target = np.concatenate([values, v2]), np.concatenate([per_target, t2])
            raw = (np.concatenate([raw[0], raw2[0]]), np.concatenate([raw[1], raw2[1]]))
    rounds["second"] = len(kept) - rounds["first"]
    phase("second_round")
    names = list(kept)
    eligible = [n for n, (_, src) in kept.items() if src != "baseline" or spec.baselines_eligible]
    probe_delta = {n: values[i, :, -1] for i, n in enumerate(names)}
    stage_delta = {n: extrapolate(values[i], coef) for i, n in enumerate(names)}
    decision = decide(probe_delta if spec.decide_at == "probe" else stage_delta, "reference", eligible,
                      spec.margin)
    stage = stage_rows(raw, objective, names, coef, decision["confidence"], seed=spec.seed)
    probe = decision if spec.decide_at == "probe" else decide(probe_delta, "reference", eligible, spec.margin)
    if spec.decide_at == "stage":  # the candidate rows show the measured probe horizon either way
        for name, row in decision["candidates"].items():
            row.update({k: probe["candidates"][name][k] for k in ("mean_delta", "std", "gain", "se", "ci", "z")})
    _horizon_rows(decision, stage, points, used)
    confirmation, confirm_cache = None, None
    evals = len(kept) * len(seeds) * len(points) * int(select_idx.size)
    if fresh:
        confirmer = MixtureProber(model, problem.domains, {s: pools for s in fresh}, _rows(ref, confirm_idx),
                                  spec.steps, spec.batch_size, spec.probe, points=points)
        confirm_cache = ProbeCache(probe_root, cfg.storage, confirmer) if spec.cache_probes else None
        confirmation = _confirm(confirmer, full_objective.subset(confirm_idx), kept, decision, eligible, fresh,
                                coef, spec, layout, confirm_cache)
        decision.update({"best": confirmation["best"], "published": confirmation["published"],
                         "improvement_found": confirmation["improvement_found"]})
        evals += len(confirmation["candidates"]) * len(fresh) * len(points) * int(confirm_idx.size)
    phase("confirmation")
    scores = problem.scores
    predicted = {n: float((w - problem.reference) @ scores) for n, (w, _) in kept.items()}
    measured = {n: probe["candidates"][n]["gain"] for n in kept}
    for i, (name, (w, source)) in enumerate(kept.items()):
        decision["candidates"][name].update({
            "source": source, "weights": dict(zip(problem.domains, np.round(w, 6).tolist())),
            "predicted_score_gain": predicted[name],
            "per_target_delta": dict(zip(problem.targets, per_target[i, :, -1].mean(axis=0).round(6).tolist())),
            "planned_epochs": {d: round(e, 3) for d, e in problem.epochs(w).items()}})
    n_probes = len(kept) * len(seeds) + (len(confirmation["candidates"]) * len(fresh) if confirmation else 0)
    decision.update({
        "aliases": alias, "seeds": seeds, "steps": spec.steps, "batch_size": spec.batch_size,
        "pool_sizes": pool_sizes, "budget_scaled_pools": spec.budget_scaled_pools,
        "reference_examples": int(ref[0].shape[0]), "split": "validation", "decide_at": spec.decide_at,
        "examples": {"select": int(select_idx.size), "confirm": 0 if confirm_idx is None else int(confirm_idx.size),
                     "draw_seed": draw, "rotate": spec.rotate,
                     "halves": "validation_select / validation_confirm (disjoint by id hash)"
                     if confirm_idx is not None else "validation"},
        "target_balance": spec.target_balance if len(problem.targets) > 1 else "single target",
        "rounds": rounds, "surrogate": surrogate_report, "multi_step": trajectory_report,
        "confirmation": confirmation,
        "probes": n_probes, "probe_steps_total": n_probes * spec.steps,
        "reference_evals": n_probes * len(points), "predicted_vs_measured": predicted_vs_measured(predicted, measured),
        "reference_example_evals": evals,
        "probe_cache": None if cache is None else {
            "reused": cache.hits + (confirm_cache.hits if confirm_cache else 0),
            "trained": cache.misses + (confirm_cache.misses if confirm_cache else 0)},
        "wall_s": round(time.monotonic() - t0, 2), "phases_s": phases})
    decision["published_weights"] = kept[decision["published"]][0]
    pub = decision["candidates"][decision["published"]]
    log.info("validation: published %s (probe-horizon gain %.4f nats, stage-horizon %.4f [%.4f, %.4f]; %s); "
             "%d candidates, %d probes", decision["published"], pub["gain"], pub.get("stage_gain", 0.0),
             *pub.get("stage_ci", [0.0, 0.0]), "improvement found" if decision["improvement_found"] else
             "no improvement found", len(kept), n_probes)
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


def finalists(rows: dict[str, dict], eligible: list[str], top: int, within_se: float) -> list[str]:
    """The first-round winner and, up to ``top`` in all, the next candidates whose first-round gain is within
    ``within_se`` standard errors of the difference from the winner's (ties at the first round's precision).
    Chosen on the first round's data only."""
    ranked = sorted((n for n in eligible if n != "reference"), key=lambda n: (rows[n]["mean_delta"], n))
    if not ranked:
        return []
    best, out = ranked[0], [ranked[0]]
    for name in ranked[1:]:
        if len(out) >= top:
            break
        gap = rows[best]["gain"] - rows[name]["gain"]
        if gap <= within_se * math.hypot(rows[best]["se"], rows[name]["se"]):
            out.append(name)
    return out


def pooled_gain(first: dict, confirm: dict) -> float:
    """Inverse-variance mean of a candidate's first-round and confirmation gains (probe horizon)."""
    parts = [(r["gain"], r["se"]) for r in (first, confirm)]
    if any(se <= 0 for _, se in parts):
        return float(confirm["gain"])
    w = [1.0 / se ** 2 for _, se in parts]
    return float(sum(wi * g for wi, (g, _) in zip(w, parts)) / sum(w))


def _confirm(prober: MixtureProber, objective: Objective, kept: dict, decision: dict, eligible: list[str],
             fresh: list[int], coef: np.ndarray, spec: ValidationSpec, layout,
             cache: ProbeCache | None = None) -> dict:
    """Selection-corrected publishing. The first round (its seeds, the select half of the validation
    examples) only chooses: its winner and the candidates tied with it (:func:`finalists`) are measured
    again with the reference on fresh seeds and the confirm half (``prober`` scores that half).

    * Gate: the first-round winner is published only when the lower end of its interval there is above 0
      (it was chosen on other data, so this test is exact: under no real gain it passes ≤ (1 − confidence)/2).
    * Choice: a finalist whose pooled gain (both rounds, inverse-variance) is higher replaces the winner if
      its own simultaneous interval (confidence Bonferroni-split over the finalists) is above 0.
    * Report: every finalist's numbers come from the fresh data; the intervals are simultaneous over the
      finalists, so they hold for whichever one the choice took."""
    final = finalists(decision["candidates"], eligible, spec.confirm_top, spec.finalist_se)
    _, _, raw = _measure(prober, objective, {n: kept[n] for n in ["reference", *final]}, fresh, layout, cache)
    return {"seeds": fresh, **confirm_decision(decision, final, raw, objective, coef, spec)}


def confirm_decision(decision: dict, final: list[str], raw: tuple[np.ndarray, np.ndarray], objective: Objective,
                     coef: np.ndarray, spec: ValidationSpec) -> dict:
    """The publish decision of :func:`_confirm` from the fresh measurements ``raw`` of the reference and
    the finalists ``final`` (in that order); adds each finalist's ``confirmed`` row to
    ``decision["candidates"]``."""
    rows = decision["candidates"]
    top = ["reference", *final]
    k = max(1, len(final))
    level = 1 - (1 - decision["confidence"]) / k  # simultaneous over the k finalists
    gate_probe = probe_rows(raw, objective, top, decision["confidence"])
    probe = probe_rows(raw, objective, top, level) if k > 1 else gate_probe
    stage = stage_rows(raw, objective, top, coef, level, seed=spec.seed + 1)
    gate_rows = gate_probe if spec.decide_at == "probe" else (
        stage_rows(raw, objective, top, coef, decision["confidence"], seed=spec.seed + 1) if k > 1 else stage)
    at = probe if spec.decide_at == "probe" else stage
    winner = final[0] if final else "reference"
    found = winner != "reference" and gate_rows[winner]["ci"][0] > 0
    score = {n: (pooled_gain(rows[n], gate_probe[n]) if spec.decide_at == "probe" else at[n]["gain"]) for n in final}
    best = max(final, key=lambda n: (score[n], n)) if final else "reference"
    chosen = winner
    if found and best != winner and at[best]["ci"][0] > 0:
        chosen = best
    for name in top:  # the published candidate's numbers come from seeds and examples that did not choose it
        rows[name]["confirmed"] = {
            "gain": probe[name]["gain"], "ci": probe[name]["ci"], "se": probe[name]["se"],
            "se_seeds": probe[name]["se_seeds"], "se_examples": probe[name]["se_examples"],
            "z": probe[name]["gain"] / probe[name]["se"] if probe[name]["se"] > 0 else 0.0,
            "confidence": level, "gate_ci": gate_rows[name]["ci"],
            "pooled_gain": score.get(name), "stage_gain": stage[name]["gain"], "stage_ci": stage[name]["ci"],
            "stage_models": {k_: stage[name][k_] for k_ in ("flat", "log_linear", "reversed")}}
    return {"candidates": top, "finalists": final, "best": best,
            "published": chosen if found else "reference", "improvement_found": bool(found),
            "examples": int(objective.tokens.size),
            "finalist_rule": (f"the first-round winner and up to {spec.confirm_top - 1} more within "
                              f"{spec.finalist_se:g} standard errors of it"),
            "rule": (f"published when the first-round winner's {decision['confidence']:.0%} interval on fresh seeds "
                     f"and held-back examples is above 0; a finalist with a higher pooled gain replaces it when its "
                     f"own {level:.1%} simultaneous interval is above 0"),
            "gate": {"candidate": winner, "ci": gate_rows[winner]["ci"] if final else None, "passed": bool(found)},
            "simultaneous_confidence": level, "selection_corrected": True, "first_round_best": decision["best"]}


class ValidateStage(Stage):
    """Short probe trainings of every candidate on the validation split, and the publish decision;
    ``stages/validate.json``."""

    name = "validate"

    def enabled(self, ctx: RunContext) -> bool:
        return ctx.cfg.mixture.validation.enabled

    def run(self, ctx: RunContext) -> None:
        boot = ctx.influence.bootstrap if ctx.influence is not None else {}
        high = boot.get("score_high")
        decision = run_validation(ctx.cfg, ctx.plan, ctx.model_uri, ctx.problem,
                                  {n: r.weights for n, r in ctx.solved.items()},
                                  {n: r.weights for n, r in ctx.baselines.items()}, ctx.cfg.mixture.solver,
                                  ctx.layout, score_high=None if high is None else np.asarray(high))
        optimizer = ctx.preflight.get("model", {}).get("optimizer")
        if optimizer:  # what the probes continued: the checkpoint's AdamW moments or a fresh AdamW
            decision["probe_optimizer"] = probe_optimizer_report(ctx.cfg, optimizer)
        ctx.validation = decision
        ctx.save_record(self.name, {**decision, "published_weights": decision["published_weights"].tolist()})

    def load(self, ctx: RunContext) -> None:
        record = ctx.load_record(self.name)
        ctx.validation = {**record, "published_weights": np.asarray(record["published_weights"])}
