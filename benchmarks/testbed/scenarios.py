"""Harder validation-testbed scenarios (docs/MIXTURE.md §4): real refreshes judged by real training.

Each scenario is a config in ``benchmarks/testbed/configs/scenario_*.yaml`` over the scenario pool: the
shipped default corpus plus three natural-language domains built from gettext catalogues
(``data/scenarios``; ``de`` is small, 70 examples). :func:`run_scenario` runs the refresh
(:func:`workflows.mixture_refresh.run_mixture_refresh`; its weights are the *published* mixture),
then trains the refresh checkpoint on ``published``, ``tokens`` and a grid (``uniform``, one
``heavy:<domain>`` corner per domain, Dirichlet samples) for several seeds with
:func:`benchmarks.testbed.harness.run_testbed`, measuring the target-loss change ΔL on a held-out target split
(``split="test"``: examples that neither the influence scores nor a validation stage used).

The training budget of the testbed equals the config's ``mixture.budget.tokens_next_stage``
(steps = budget / (batch_size × max_length)) unless ``steps`` is given, and the training pools hold
every ``max_length``-token window of every corpus example (``per_domain``; packed, as a trainer sees
whole documents), so a heavy weight on the small domain repeats its unique tokens as often as the
next stage would.

Acceptance per scenario (:func:`acceptance`), with the seed std pooled over all evaluated mixtures:

- ``gain_std = (mean ΔL(uniform) − mean ΔL(published)) / seed_std``, goal >= 1 wherever any evaluated
  mixture beats uniform by >= 1.5 seed std;
- worse than uniform beyond noise: ``mean ΔL(published) − mean ΔL(uniform) > 2 · seed_std · √(2/n)``
  (two standard errors of a difference of two n-seed means), goal: no;
- ``regret = mean ΔL(published) − min over every other evaluated mixture (grid, baselines, the refresh's
  other candidates) of mean ΔL`` (nats), goal <= 0.02;
- stage-horizon coverage: the published candidate's extrapolated stage-horizon CI (from validation)
  holds the measured per-seed gain over uniform, goal >= 80% of scenario × seed cases (over scenarios);
- cost: the refresh's training-step equivalents over the grid's (its mixtures × stage steps × seeds),
  goal <= 0.3.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from operators.errors import ConfigError
from workflows.config import RunConfig, load_config

log = logging.getLogger(__name__)

__all__ = ["retest_scenario", "Scenario", "SCENARIOS", "GOALS", "scenario_config", "acceptance", "run_scenario", "rescore_scenario",
           "target_half_losses", "budget_steps", "candidate_mixtures"]

#: Acceptance goals (docs/MIXTURE.md §4): gain over uniform in seed std, regret vs the grid's best in nats.
GOALS = {"gain_std": 1.0, "any_gain_std": 1.5, "regret": 0.02, "coverage": 0.8, "cost_ratio": 0.3}
PUBLISHED = "published"
CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class Scenario:
    """One harder-testbed scenario: a bundled config name and what it probes."""

    name: str
    config: str
    description: str


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("oop_small", "scenario_oop_small",
             "target nl outside the pool; the closest pool domain (de) is small: 70 examples"),
    Scenario("oop", "scenario_oop", "target pt outside the pool; related to the large pool domain es"),
    Scenario("mixed", "scenario_mixed",
             "mixed target: half Python code (easy), half French messages (hard)"),
    Scenario("saturated", "scenario_saturated",
             "mixed target: half Python code (saturated), half Portuguese (under-learned, outside the pool)"),
    Scenario("two_targets", "scenario_two_targets",
             "two target sets weighted 0.5 / 0.5: Python code (easy) and Dutch (hard, outside the pool)"),
]}

#: Fast refresh settings for the testbed (as benchmarks/mixture_testbed.py uses for the default).
FAST_REFRESH = ("sampling.rate=0.2", "influence.bootstrap=40", "cluster.num_workers=2")


def scenario_config(name: str, output_uri: str, cache_dir: str | None = None,
                    overrides: Sequence[str] = (), fast: bool = True) -> RunConfig:
    """The resolved config of scenario ``name`` with its outputs under ``output_uri``."""
    if name not in SCENARIOS:
        raise ConfigError(f"unknown testbed scenario {name!r}; known: {sorted(SCENARIOS)}")
    extra = [f"output_uri={output_uri}"] + ([f"model.cache_dir={cache_dir}"] if cache_dir else [])
    path = str(CONFIG_DIR / f"{SCENARIOS[name].config}.yaml")
    return load_config(path, [*(FAST_REFRESH if fast else ()), *extra, *overrides])


def budget_steps(cfg: RunConfig, batch_size: int) -> int:
    """Training steps whose token budget (batch_size × max_length per step) is tokens_next_stage."""
    budget = cfg.mixture.budget.tokens_next_stage
    if budget is None:
        raise ConfigError(f"{cfg.name}: mixture.budget.tokens_next_stage is not set; pass `steps`")
    return max(1, round(budget / (batch_size * cfg.featurize.max_length)))


def acceptance(report: Mapping, name: str = PUBLISHED, baseline: str = "uniform",
               stage_ci: Sequence[float] | None = None, refresh_steps: float | None = None) -> dict:
    """Gain over ``baseline`` in seed-std units, worse-beyond-noise flag, regret, stage-horizon CI coverage,
    cost ratio and PASS (module doc)."""
    rows = report["mixtures"]
    for key in (name, baseline):
        if key not in rows:
            raise ConfigError(f"testbed report has no mixture {key!r} (has {sorted(rows)})")
    std = float(report["seed_std"])
    n = len(rows[name]["delta"])
    gain = rows[baseline]["mean"] - rows[name]["mean"]  # nats of target loss, > 0: name is better

    def in_std(x: float) -> float:
        return x / std if std > 0 else (math.inf if x > 0 else -math.inf if x < 0 else 0.0)

    gain_std = in_std(gain)
    noise = 2.0 * std * math.sqrt(2.0 / n) if n > 0 else math.inf
    worse = bool(-gain > noise)
    others = [k for k in rows if k != name]
    best_any = min(others, key=lambda k: (rows[k]["mean"], k))
    regret = float(rows[name]["mean"] - rows[best_any]["mean"]) if others else 0.0
    best_gain_std = max((in_std(rows[baseline]["mean"] - rows[k]["mean"]) for k in others), default=0.0)
    gain_required = bool(best_gain_std >= GOALS["any_gain_std"])
    passed = bool((gain_std >= GOALS["gain_std"] or not gain_required) and not worse and regret <= GOALS["regret"])
    out = {"name": name, "baseline": baseline, "gain": gain, "gain_std": gain_std, "seed_std": std,
           "seeds": n, "noise": noise, "worse_beyond_noise": worse, "regret": regret,
           "regret_grid": float(rows[name]["regret"]), "best": report["best"], "best_any": best_any,
           "best_gain_std": best_gain_std, "gain_required": gain_required, "goals": dict(GOALS),
           "passed": passed}
    if stage_ci is not None:
        per_seed = np.asarray(rows[baseline]["delta"]) - np.asarray(rows[name]["delta"])
        covered = (per_seed >= stage_ci[0] - 1e-12) & (per_seed <= stage_ci[1] + 1e-12)
        out.update({"stage_ci": [float(stage_ci[0]), float(stage_ci[1])], "measured_per_seed": per_seed.tolist(),
                    "covered": covered.tolist()})
    if refresh_steps is not None:
        steps = report["settings"]["steps"]
        grid = len(report["grid"]) * steps * n
        out.update({"refresh_steps": float(refresh_steps), "grid_steps": grid, "cost_ratio": refresh_steps / grid,
                    "grid_steps_one_seed": len(report["grid"]) * steps,
                    "cost_ratio_one_seed": refresh_steps / (len(report["grid"]) * steps)})
    return out


def published_stage_ci(refresh_report: Mapping) -> list[float] | None:
    """The published candidate's stage-horizon CI vs the reference (fresh confirmation seeds when it was
    confirmed), or None without validation."""
    v = refresh_report.get("validation") or {}
    row = (v.get("candidates") or {}).get(v.get("published"))
    if not row or "stage_ci" not in row:
        return None
    return list((row.get("confirmed") or {}).get("stage_ci", row["stage_ci"]))


def _repetitions(weights: Mapping[str, float], pool_sizes: Mapping[str, int], steps: int,
                 batch_size: int) -> dict[str, float]:
    """Expected passes over each domain's training pool when training on ``weights``."""
    return {d: float(w) * steps * batch_size / pool_sizes[d] for d, w in weights.items()
            if pool_sizes.get(d)}


def candidate_mixtures(report: Mapping) -> dict[str, dict[str, float]]:
    """The refresh report's other candidates, named ``solver:<name>`` and ``baseline:<name>`` (the
    uniform and tokens baselines are left out: the testbed evaluates ``uniform`` and ``tokens`` itself)."""
    out: dict[str, dict[str, float]] = {}
    for kind, key in (("solver", "solvers"), ("baseline", "baselines")):
        for name, row in (report.get(key) or {}).items():
            if kind == "baseline" and name in ("uniform", "tokens"):
                continue
            out[f"{kind}:{name}"] = {d: float(w) for d, w in row["weights"].items()}
    return out


def target_half_losses(cfg: RunConfig, model_uri: str, max_examples: int = 64) -> dict[str, dict[str, float]]:
    """Per target, the checkpoint's per-token loss on each value of the target files' own ``domain``
    column (the halves of a mixed target; ``all`` when there is none), over at most ``max_examples``
    rows per half (local Parquet targets; others are skipped)."""
    import pyarrow.parquet as pq

    from operators.io.corpus import cap_per_domain
    from operators.io.storage import local_path
    from operators.model.loading import load_causal_lm
    from operators.model.tiny_lm import lm_loss, small_model_threads

    loaded = load_causal_lm(model_uri, device="cpu", dtype="float32", storage=cfg.storage,
                            cache_dir=cfg.model.cache_dir)
    out: dict[str, dict[str, float]] = {}
    with small_model_threads(loaded.model):
        for target in cfg.targets:
            paths = [p for p in target.paths if local_path(p) is not None and str(p).endswith(".parquet")]
            if not paths:
                continue
            table = pa.concat_tables([pq.read_table(p) for p in paths])
            if "domain" not in table.column_names:
                table = table.append_column("domain", pa.array(["all"] * table.num_rows))
            table = cap_per_domain(table.select([target.id_column or "id", "domain", target.text_column])
                                   .rename_columns(["id", "domain", "text"]), max_examples, cfg.sampling.seed)
            halves: dict[str, float] = {}
            for half in sorted(set(table.column("domain").to_pylist())):
                texts = table.filter(pa.compute.equal(table.column("domain"), half)).column("text").to_pylist()
                halves[str(half)] = float(lm_loss(loaded.model, loaded.tokenizer, texts, cfg.featurize.max_length))
            out[target.name] = halves
    return out


def run_scenario(
    name: str,
    output_uri: str,
    *,
    cache_dir: str | None = None,
    overrides: Sequence[str] = (),
    steps: int | None = None,
    batch_size: int = 8,
    seeds: Sequence[int] = (0, 1, 2),
    grid_size: int | None = None,
    grid_seed: int = 0,
    per_domain: int = 100_000,
    reference_examples: int = 128,
    split: str = "test",
    candidates: bool = True,
) -> dict:
    """Refresh scenario ``name``, then evaluate ``published`` vs ``uniform``, ``tokens``, a grid and (with
    ``candidates``) the refresh's other solver and baseline mixtures (:func:`candidate_mixtures`, e.g.
    ``baseline:dsir``).

    Returns a JSON-able dict: ``scenario``, ``description``, ``config``, ``refresh`` (run id, published
    weights, which candidate the validation stage published, its validation report, wall seconds),
    ``testbed`` (:func:`benchmarks.testbed.harness.run_testbed`'s report, its mixtures
    with ``repetitions``: expected passes over each domain's pool), ``target_losses`` (per-token loss
    of the checkpoint on each half of each target) and ``acceptance`` (:func:`acceptance`).
    """
    from workflows.mixture_refresh import resolve_model_uri, run_mixture_refresh
    from benchmarks.testbed.harness import run_testbed

    if len(seeds) < 2:
        raise ConfigError(f"run_scenario: need >= 2 seeds for a seed std, got {list(seeds)}")
    cfg = scenario_config(name, output_uri, cache_dir, overrides)
    steps = steps or budget_steps(cfg, batch_size)
    started = time.perf_counter()
    result = run_mixture_refresh(cfg)
    refresh_s = time.perf_counter() - started
    started = time.perf_counter()
    extra = candidate_mixtures(result.report) if candidates else {}
    report = run_testbed(cfg, result.weights, extra=extra, grid_size=grid_size, grid_seed=grid_seed, steps=steps,
                         batch_size=batch_size, seeds=seeds, per_domain=per_domain,
                         reference_examples=reference_examples, name=PUBLISHED, split=split, packed=True)
    testbed_s = time.perf_counter() - started
    for row in report["mixtures"].values():
        row["repetitions"] = _repetitions(row["weights"], report["pool_sizes"], steps, batch_size)
    return {
        "scenario": name,
        "description": SCENARIOS[name].description,
        "config": cfg.name,
        "tokens_next_stage": cfg.mixture.budget.tokens_next_stage,
        "refresh": {"run_id": result.run_id, "weights": dict(result.weights), "wall_s": round(refresh_s, 2),
                    "published_source": (result.report.get("validation") or {}).get("published"),
                    "validation": result.report.get("validation"), "cost": result.report.get("cost")},
        "testbed": report,
        "testbed_wall_s": round(testbed_s, 2),
        "target_losses": target_half_losses(cfg, resolve_model_uri(cfg)),
        "acceptance": acceptance(report, PUBLISHED, "uniform", stage_ci=published_stage_ci(result.report),
                                 refresh_steps=(result.report.get("cost") or {}).get("total")),
    }


def rescore_scenario(saved: Mapping, output_uri: str, *, cache_dir: str | None = None,
                     overrides: Sequence[str] = ()) -> dict:
    """Re-run only the refresh of a saved :func:`run_scenario` result and re-score it against the saved
    ground truth, for a change that touches what validation REPORTS but not what it publishes (e.g. the
    stage-horizon interval). ConfigError if the published mixture is not the saved one: then the
    testbed must be run again."""
    from workflows.mixture_refresh import run_mixture_refresh

    name = saved["scenario"]
    cfg = scenario_config(name, output_uri, cache_dir, overrides)
    started = time.perf_counter()
    result = run_mixture_refresh(cfg)
    old = saved["refresh"]["weights"]
    drift = max(abs(float(result.weights[d]) - float(old[d])) for d in old)
    if set(result.weights) != set(old) or drift > 1e-6:
        raise ConfigError(f"rescore {name}: the published mixture changed (max |Δw| {drift:.2g}); run the "
                          "testbed again instead")
    out = dict(saved)
    out["refresh"] = {**saved["refresh"], "run_id": result.run_id, "wall_s": round(time.perf_counter() - started, 2),
                      "validation": result.report.get("validation"), "cost": result.report.get("cost"),
                      "rescored": True}
    out["acceptance"] = acceptance(saved["testbed"], PUBLISHED, "uniform", stage_ci=published_stage_ci(result.report),
                                   refresh_steps=(result.report.get("cost") or {}).get("total"))
    return out


FIRST_ORDER, MULTI_STEP = "answer:first_order", "answer:multi_step"


def influence_answers(report: Mapping, primary: str, domains: Sequence[str]) -> dict[str, dict[str, float]]:
    """The refresh's primary solver answer on first-order influence and, when validation made one, its
    answer on multi-step influence (``validation.multi_step``), as testbed mixtures."""
    v = report.get("validation") or {}
    rows, aliases = v.get("candidates") or {}, v.get("aliases") or {}
    first = rows.get(primary) or rows.get(aliases.get(primary, ""))
    multi = (v.get("multi_step") or {}).get("weights")  # also when validation dropped it as a duplicate
    out = {}
    if first is not None:
        out[FIRST_ORDER] = {d: float(first["weights"][d]) for d in domains}
    if multi is not None:
        out[MULTI_STEP] = {d: float(multi[d]) for d in domains}
    return out


def multi_step_comparison(measured: Mapping, uniform: Mapping) -> dict:
    """Stage-horizon ground truth of the two influence answers: each one's gain over uniform, and the
    multi-step answer's paired gain over the first-order one per seed, with its seed std."""
    rows = measured["mixtures"]
    u = np.asarray(uniform["delta"], dtype=np.float64)
    first, multi = (np.asarray(rows[n]["delta"], dtype=np.float64) for n in (FIRST_ORDER, MULTI_STEP))
    paired = first - multi  # > 0: the multi-step answer lowered the test loss more
    return {"first_order_gain": float(np.mean(u - first)), "multi_step_gain": float(np.mean(u - multi)),
            "multi_minus_first": float(paired.mean()),
            "paired_std": float(paired.std(ddof=1)) if paired.size > 1 else 0.0,
            "per_seed": paired.tolist(),
            "rows": {n: rows[n] for n in (FIRST_ORDER, MULTI_STEP)}}


def retest_scenario(saved: Mapping, output_uri: str, *, cache_dir: str | None = None,
                    overrides: Sequence[str] = (), reference_examples: int = 128) -> dict:
    """Re-run the refresh of a saved :func:`run_scenario` result with the current code and train only its
    (possibly new) published mixture, plus ``uniform`` again as a check, on the saved testbed's seeds, pools,
    steps and test split; the grid and baseline rows keep their saved ground truth, which the same seeds
    and data reproduce (paired probes). The saved ``solver:*`` rows were another refresh's answers: they
    move to ``stale_solver_rows`` and this refresh's primary answer and multi-step answer are trained in
    their place, so regret compares the published mixture with what THIS refresh could have chosen. ``retest.uniform_max_abs_diff`` reports how closely
    the re-measured uniform row matches the saved one."""
    import copy

    from benchmarks.testbed.harness import compare, evaluate_mixtures
    from operators.training.probing import ProbeSpec
    from workflows.mixture_refresh import resolve_model_uri, run_mixture_refresh
    from workflows.run.plan import build_plan

    name = saved["scenario"]
    cfg = scenario_config(name, output_uri, cache_dir, overrides)
    started = time.perf_counter()
    result = run_mixture_refresh(cfg)
    refresh_s = time.perf_counter() - started
    old = copy.deepcopy(saved["testbed"])
    st = old["settings"]
    domains = old["domains"]
    published = {d: float(result.weights.get(d, 0.0)) for d in domains}
    extra = influence_answers(result.report, cfg.mixture.solver, domains)
    started = time.perf_counter()
    fresh = evaluate_mixtures(cfg, build_plan(cfg), resolve_model_uri(cfg),
                              {PUBLISHED: published, "uniform": old["mixtures"]["uniform"]["weights"], **extra},
                              st["steps"], st["batch_size"], st["seeds"], st["per_domain"], grid=["uniform"],
                              probe=ProbeSpec(**st["probe"]), reference_examples=reference_examples,
                              data_seed=st["data_seed"], full_corpus=st["full_corpus"],
                              split=st["reference_split"], packed=st["packed"])
    check = float(np.max(np.abs(np.array(fresh["mixtures"]["uniform"]["delta"])
                                - np.array(old["mixtures"]["uniform"]["delta"]))))
    old["mixtures"][PUBLISHED] = fresh["mixtures"][PUBLISHED]
    multi_step = multi_step_comparison(fresh, old["mixtures"]["uniform"]) if MULTI_STEP in extra else None
    # the saved solver rows are another refresh's answers (an earlier version of the code): kept for the
    # record, not compared with; this refresh's own answers, measured just now, take their place
    old["stale_solver_rows"] = {k: old["mixtures"].pop(k) for k in [k for k in old["mixtures"] if k.startswith("solver:")]}
    for key, row in ((FIRST_ORDER, f"solver:{cfg.mixture.solver}"), (MULTI_STEP, "solver:multi_step")):
        if key in extra:
            old["mixtures"][row] = fresh["mixtures"][key]
    best = min(old["grid"], key=lambda g: (old["mixtures"][g]["mean"], g))
    for row in old["mixtures"].values():
        row["regret"] = row["mean"] - old["mixtures"][best]["mean"]
    old["best"], old["best_mean"] = best, old["mixtures"][best]["mean"]
    old["seed_std"] = math.sqrt(float(np.mean([r["std"] ** 2 for r in old["mixtures"].values()])))
    old["comparison"] = compare(old, PUBLISHED, "uniform")
    out = dict(saved)
    out["refresh"] = {"run_id": result.run_id, "weights": dict(result.weights), "wall_s": round(refresh_s, 2),
                      "published_source": (result.report.get("validation") or {}).get("published"),
                      "validation": result.report.get("validation"), "cost": result.report.get("cost"),
                      "retested": True}
    out["testbed"] = old
    out["testbed_wall_s"] = round(time.perf_counter() - started, 2)
    out["retest"] = {"uniform_max_abs_diff": check, "saved_uniform": old["mixtures"]["uniform"]["delta"],
                     "remeasured_uniform": fresh["mixtures"]["uniform"]["delta"], "multi_step": multi_step}
    out["acceptance"] = acceptance(old, PUBLISHED, "uniform", stage_ci=published_stage_ci(result.report),
                                   refresh_steps=(result.report.get("cost") or {}).get("total"))
    return out
