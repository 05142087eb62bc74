"""Validation testbed for chosen mixtures: regret against a grid, by real training (docs/MIXTURE.md §4).

Ground truth by actually training: every named mixture continues training the refresh checkpoint for
a few steps on batches drawn by that mixture from per-domain pools (``operators.training.probing.probe_mixture``)
and the change of the target loss is measured on a reference set built from the ``test`` split of the
config's targets (never used by a refresh), mixed by target weight. Lower ΔL is better. The report gives per mixture the mean/std over seeds and
the regret against the best mixture of a small grid (uniform, domain-heavy corners, Dirichlet
samples): ``regret(name) = mean ΔL(name) − min over grid mixtures of mean ΔL``. A negative regret means
the mixture beat every grid mixture. The loss before training is common to all mixtures. Harder
scenarios (out-of-pool targets, a small pool domain, a mixed target) are in benchmarks/testbed/scenarios.py.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from operators.errors import ConfigError
from operators.mixture.simplex import project_bounded_simplex
from operators.mixture.regression import sample_dirichlet_mixtures
from operators.model.loading import load_causal_lm
from operators.training.probing import ProbeSpec, probe_mixture, reference_loss
from operators.io.splits import SplitName
from operators.model.tiny_lm import small_model_threads
from operators.model.tokenize import prepare_tokenizer
from workflows.config import RunConfig
from workflows.jobs.examples import ExampleSource, domain_pools, reference_set
from workflows.run.plan import Plan

log = logging.getLogger(__name__)

__all__ = ["grid_mixtures", "evaluate_mixtures", "run_testbed", "compare", "testbed_reference"]

#: Default probe optimizer of the testbed (AdamW, as TiKMiX-M probes).
DEFAULT_PROBE = ProbeSpec(lr=1e-3, reference_batch_size=64)


def _bounds(k: int, value: np.ndarray | Sequence[float] | None, default: float, name: str) -> np.ndarray:
    if value is None:
        return np.full(k, default)
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size != k or not np.all(np.isfinite(arr)):
        raise ConfigError(f"grid_mixtures: `{name}` needs {k} finite entries, got {arr.tolist()}")
    return arr


def grid_mixtures(
    domains: Sequence[str],
    n: int,
    seed: int,
    lower: np.ndarray | Sequence[float] | None = None,
    upper: np.ndarray | Sequence[float] | None = None,
) -> dict[str, dict[str, float]]:
    """A small grid of ``n`` mixtures inside ``[lower, upper]``: ``uniform``, one ``heavy:<domain>``
    corner per domain (its weight as high as the bounds allow, the rest shared evenly), then
    ``n − 1 − K`` Dirichlet samples ``dirichlet:<i>`` around uniform (RegMix strengths). ConfigError if
    ``n < 1 + K`` or the bounds are infeasible.
    """
    names = [str(d) for d in domains]
    k = len(names)
    if k < 2 or len(set(names)) != k:
        raise ConfigError(f"grid_mixtures: need >= 2 unique domains, got {names}")
    if n < 1 + k:
        raise ConfigError(f"grid_mixtures: n={n} cannot hold uniform and the {k} domain corners "
                          f"(need >= {1 + k})")
    lo = _bounds(k, lower, 0.0, "lower")
    hi = _bounds(k, upper, 1.0, "upper")
    if np.any(lo > hi) or lo.sum() > 1.0 + 1e-9 or hi.sum() < 1.0 - 1e-9:
        raise ConfigError(f"grid_mixtures: infeasible bounds lower={lo.tolist()} upper={hi.tolist()}")
    rows: list[tuple[str, np.ndarray]] = [("uniform", project_bounded_simplex(np.full(k, 1.0 / k), lo, hi))]
    for i, d in enumerate(names):
        rows.append((f"heavy:{d}", project_bounded_simplex(np.eye(k)[i], lo, hi)))
    if n > 1 + k:
        samples = sample_dirichlet_mixtures(np.full(k, 1.0 / k), n - 1 - k, seed, lo, hi)
        rows.extend((f"dirichlet:{i}", w) for i, w in enumerate(samples))
    return {name: {d: float(v) for d, v in zip(names, w)} for name, w in rows}




def _check_mixtures(mixtures: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Validate mixtures; return the sorted domains that any of them weights."""
    if not mixtures:
        raise ConfigError("evaluate_mixtures: `mixtures` is empty")
    domains: set[str] = set()
    for name, w in mixtures.items():
        vals = np.array([float(v) for v in w.values()], dtype=np.float64)
        if vals.size == 0 or not np.all(np.isfinite(vals)) or np.any(vals < 0) or vals.sum() <= 0:
            raise ConfigError(f"evaluate_mixtures: mixture {name!r} needs finite weights >= 0, not all 0; "
                              f"got {dict(w)}")
        domains.update(d for d, v in w.items() if v > 0)
    return sorted(domains)


def testbed_reference(cfg: RunConfig, plan: Plan, tokenizer, total: int, seed: int,
                      split: SplitName = "test") -> tuple[object, object]:
    """(ids, mask) of the testbed's reference set: ``split`` of the targets (operators/io/splits.py).

    The default ``test`` split is never touched by a refresh (neither the influence scores nor the
    validation probes), so a published mixture is judged on data that did not choose it.
    """
    return reference_set(ExampleSource.of(cfg), plan, tokenizer, total=total, seed=seed, split=split)


def packed_pools(cfg: RunConfig, plan: Plan, tokenizer, per_domain: int, seed: int,
                 domains: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-domain pools of every ``max_length``-token window of up to ``per_domain`` examples (documents
    encoded whole, then cut into consecutive windows, as a packing trainer would see them), so a
    domain's pool holds all of its unique tokens rather than each example's first window only."""
    from workflows.jobs.examples import sample_rows_per_group

    length = cfg.featurize.max_length
    table = sample_rows_per_group(ExampleSource.of(cfg), plan.corpus_tasks(), per_domain, seed)
    pad = tokenizer.pad_token_id
    pools: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    all_domains = np.asarray(table.column("domain").to_pylist(), dtype=object)
    texts = table.column("text").to_pylist()
    for domain in domains:
        rows = [texts[i] for i in np.flatnonzero(all_domains == domain)]
        if not rows:
            continue
        encoded = tokenizer(rows, truncation=False, padding=False, add_special_tokens=True,
                            verbose=False)["input_ids"]
        windows = [e[i:i + length] for e in encoded for i in range(0, len(e), length)]
        windows = [w for w in windows if len(w) >= 2]
        ids = torch.full((len(windows), length), pad, dtype=torch.long)
        mask = torch.zeros((len(windows), length), dtype=torch.long)
        for j, w in enumerate(windows):
            ids[j, :len(w)] = torch.tensor(w, dtype=torch.long)
            mask[j, :len(w)] = 1
        pools[domain] = (ids, mask)
    return pools


def _sd(x: np.ndarray) -> float:
    return float(x.std(ddof=1)) if x.size > 1 else 0.0


def evaluate_mixtures(
    cfg: RunConfig,
    plan: Plan,
    model_uri: str,
    mixtures: Mapping[str, Mapping[str, float]],
    steps: int,
    batch_size: int,
    seeds: Sequence[int],
    per_domain: int,
    *,
    grid: Sequence[str] | None = None,
    probe: ProbeSpec | None = None,
    reference_examples: int = 128,
    data_seed: int = 1,
    full_corpus: bool = True,
    split: SplitName = "test",
    packed: bool = False,
) -> dict:
    """Train the checkpoint on each mixture × seed and report the target-loss change ΔL.

    Pools hold up to ``per_domain`` examples per domain (``full_corpus``: drawn from the whole corpus,
    not only the featurization sample); the reference set has about ``reference_examples`` target
    examples mixed by target weight. Pools and reference are chosen by ``data_seed`` (fixed across
    seeds); a seed changes the batch draws. ``grid`` names the mixtures the regret is measured
    against (default: all). ``split`` picks the part of the targets the reference set is drawn from
    (default ``test``, held out from every refresh stage; :func:`testbed_reference`). ``packed``:
    pools of every ``max_length``-token window of each example (:func:`packed_pools`) instead of each
    example's first window. Returns a JSON-able dict (see module docstring).
    """
    if steps < 1 or batch_size < 1 or per_domain < 1 or reference_examples < 1:
        raise ConfigError("evaluate_mixtures: steps, batch_size, per_domain, reference_examples must be "
                          f">= 1, got {steps}, {batch_size}, {per_domain}, {reference_examples}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("evaluate_mixtures: `seeds` is empty")
    grid_names = list(mixtures) if grid is None else list(grid)
    unknown = [g for g in grid_names if g not in mixtures]
    if not grid_names or unknown:
        raise ConfigError(f"evaluate_mixtures: grid names {unknown or grid_names} are not among the mixtures")
    domains = _check_mixtures(mixtures)
    spec = probe or DEFAULT_PROBE
    t0 = time.monotonic()
    loaded = load_causal_lm(model_uri, device="cpu", dtype="float32", storage=cfg.storage,
                            cache_dir=cfg.model.cache_dir)
    tokenizer = prepare_tokenizer(loaded.tokenizer)
    pool_cfg = cfg
    if full_corpus:
        pool_cfg = cfg.model_copy(update={"sampling": cfg.sampling.model_copy(
            update={"rate": 1.0, "max_per_domain": None})})
    if packed:
        pools = packed_pools(pool_cfg, plan, tokenizer, per_domain=per_domain, seed=data_seed, domains=domains)
    else:
        pools = domain_pools(ExampleSource.of(pool_cfg), plan, tokenizer, per_domain=per_domain, seed=data_seed,
                             domains=domains)
    missing = [d for d in domains if d not in pools]
    if missing:
        raise ConfigError(f"evaluate_mixtures: no corpus examples for domains {missing} named by the "
                          "mixtures")
    ref_ids, ref_mask = testbed_reference(cfg, plan, tokenizer, reference_examples, data_seed, split)
    rows: dict[str, dict] = {}
    with small_model_threads(loaded.model):
        base = reference_loss(loaded.model, ref_ids, ref_mask, spec.reference_batch_size)
        for name, weights in mixtures.items():
            w = {d: float(v) for d, v in weights.items() if v > 0}
            total = sum(w.values())
            deltas = np.array([probe_mixture(loaded.model, pools, w, steps, batch_size, ref_ids, ref_mask,
                                             spec, seed) for seed in seeds])
            rows[name] = {"weights": {d: w.get(d, 0.0) / total for d in domains}, "delta": deltas.tolist(),
                          "mean": float(deltas.mean()), "std": _sd(deltas),
                          "final_loss": float(base + deltas.mean())}
            log.info("testbed %s: ΔL = %.4f ± %.4f", name, rows[name]["mean"], rows[name]["std"])
    best = min(grid_names, key=lambda g: (rows[g]["mean"], g))
    for row in rows.values():
        row["regret"] = row["mean"] - rows[best]["mean"]
    pooled = math.sqrt(float(np.mean([r["std"] ** 2 for r in rows.values()])))
    return {
        "domains": domains,
        "model_uri": model_uri,
        "settings": {"steps": steps, "batch_size": batch_size, "seeds": seeds, "per_domain": per_domain,
                     "reference_examples": int(ref_ids.shape[0]), "data_seed": data_seed,
                     "full_corpus": full_corpus, "probe": spec.model_dump(mode="json"),
                     "reference_split": split, "packed": packed},
        "pool_sizes": {d: int(p[0].shape[0]) for d, p in pools.items()},
        "base_loss": float(base),
        "mixtures": rows,
        "grid": grid_names,
        "best": best,
        "best_mean": rows[best]["mean"],
        "seed_std": pooled,
        "wall_s": round(time.monotonic() - t0, 2),
    }


def compare(report: dict, name: str = "chosen", baseline: str = "uniform") -> dict:
    """ΔL(name) − ΔL(baseline) (negative: name is better), both regrets, and the pooled seed std."""
    rows = report["mixtures"]
    for key in (name, baseline):
        if key not in rows:
            raise ConfigError(f"testbed report has no mixture {key!r} (has {sorted(rows)})")
    diff = rows[name]["mean"] - rows[baseline]["mean"]
    return {
        "name": name, "baseline": baseline,
        "improvement": -diff,  # target-loss drop of `name` beyond `baseline`
        "ratio": rows[name]["mean"] / rows[baseline]["mean"] if rows[baseline]["mean"] != 0 else float("nan"),
        "regret": rows[name]["regret"], "baseline_regret": rows[baseline]["regret"],
        "seed_std": report["seed_std"],
        "beyond_noise": bool(-diff > 2.0 * report["seed_std"]),
    }


def run_testbed(
    cfg: RunConfig,
    result_weights: Mapping[str, float],
    *,
    extra: Mapping[str, Mapping[str, float]] | None = None,
    grid_size: int | None = None,
    grid_seed: int = 0,
    steps: int = 30,
    batch_size: int = 8,
    seeds: Sequence[int] = (0, 1),
    per_domain: int = 64,
    probe: ProbeSpec | None = None,
    reference_examples: int = 128,
    name: str = "chosen",
    split: SplitName = "test",
    packed: bool = False,
) -> dict:
    """Evaluate a finished refresh's mixture (``name``, default ``chosen``) against ``tokens``
    (proportional to each domain's unique tokens over the whole corpus, within the bounds), any
    ``extra`` mixtures and a grid within the refresh problem's bounds (config box + the budget's reuse
    cap; default size ``2K + 1``). Needs the refresh's completion records (token counts). ``split``:
    the target split to measure on (default ``test``; see :func:`testbed_reference`). Adds
    ``comparison`` (``name`` vs uniform) to :func:`evaluate_mixtures`' report.
    """
    from operators.features import datastore
    from workflows.stages.aggregate import domain_order
    from workflows.mixture_refresh import resolve_model_uri
    from workflows.stages.problem import build_problem
    from workflows.run.plan import build_plan, plan_completions

    plan = build_plan(cfg)
    model_uri = resolve_model_uri(cfg)
    order, _ = domain_order(cfg, plan)
    stray = sorted(set(result_weights) - set(order))
    if stray:
        raise ConfigError(f"run_testbed: result_weights name domains {stray} that the refresh did not "
                          "featurize")
    available = datastore.estimated_tokens_available(plan_completions(plan, cfg.storage))
    problem = build_problem(cfg, order, available, previous=None, model_uri=model_uri)
    grid = grid_mixtures(order, grid_size or 2 * len(order) + 1, grid_seed, problem.lower, problem.upper)
    u = np.array([float(available.get(d, 0)) for d in order])
    tokens = project_bounded_simplex(u / u.sum() if u.sum() > 0 else np.full(len(order), 1.0 / len(order)),
                                     problem.lower, problem.upper)
    named: dict[str, Mapping[str, float]] = {
        name: dict(result_weights),
        "tokens": dict(zip(order, tokens.tolist())),
        **(extra or {}),
    }
    clash = sorted(set(named) & set(grid))
    if clash:
        raise ConfigError(f"run_testbed: mixture names {clash} clash with grid names")
    report = evaluate_mixtures(cfg, plan, model_uri, {**named, **grid}, steps, batch_size, seeds, per_domain,
                               grid=list(grid), probe=probe, reference_examples=reference_examples,
                               split=split, packed=packed)
    report["run_id"] = plan.run_id
    report["bounds"] = {"lower": dict(zip(order, problem.lower.tolist())),
                        "upper": dict(zip(order, problem.upper.tolist()))}
    report["comparison"] = compare(report, name, "uniform")
    return report
