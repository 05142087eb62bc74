"""Mixture testbed: train the tiny model on candidate mixtures, print regret vs a grid and acceptance.

    python benchmarks/mixture_testbed.py [--scenario all|default|NAME [NAME ...]] [--steps N]
                                         [--seeds 0 1 2] [--grid 13] [--split test] [--json FILE]

Scenarios (default ``all``; docs/MIXTURE.md §4, ``benchmarks/testbed/scenarios.py``): ``oop_small`` (target
nl outside the pool, its related pool domain de has only 70 examples), ``oop`` (target pt outside the
pool), ``mixed`` (half code, half French), ``saturated`` (half code the checkpoint has learned, half
Portuguese it has not), ``two_targets`` (code and Dutch as two target sets weighted 0.5 / 0.5). Each runs its refresh (fast settings: sampling.rate=0.2, 40
bootstrap draws), then trains the checkpoint on the published mixture, uniform, token-proportional,
the refresh's other candidates (``solver:<name>``, ``baseline:<name>`` e.g. the DSIR baseline) and a grid
(uniform, one heavy corner per domain, Dirichlet samples) for each seed, for the config's next-stage
token budget (``--steps`` overrides), and measures ΔL on the held-out ``--split`` of the targets. It
prints a table per scenario and an ACCEPTANCE block with the goals (benchmarks/testbed/scenarios.py
GOALS): gain over uniform >= 1 seed std wherever any evaluated mixture beats uniform by >= 1.5 std,
not worse than uniform beyond noise, regret <= 0.02 nats vs the best of the grid and the baselines,
the validation's stage-horizon CI covering the measured per-seed gain in >= 80% of scenario × seed
cases, and the refresh's cost in training-step equivalents <= 0.3 of the grid's. About 8 minutes per
scenario on 2 shared CPU cores.

``--scenario default`` runs the embedded default refresh (fast settings: sampling.rate=0.2, 40 bootstrap draws) into a temp
output dir, then continues training its checkpoint on each mixture (chosen = TiKMiX-D, uniform,
token-proportional, grid: domain-heavy corners and Dirichlet samples) and measures the change of the
target loss ΔL (lower is better) on a reference set mixed from the config's targets. With
``--tikmix-m`` the refresh also runs TiKMiX-M (mixture.solver=tikmix_m) and both are evaluated.
About 2-4 minutes on 2 CPU cores (defaults there: --steps 40 --grid 11).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: benchmarks.testbed

from operators.errors import ConfigError
from workflows.config import load_config
from workflows.mixture_refresh import run_mixture_refresh
from benchmarks.testbed.harness import compare, run_testbed
from benchmarks.testbed.scenarios import GOALS, PUBLISHED, SCENARIOS, rescore_scenario, retest_scenario, run_scenario


def print_table(report: dict, steps: int, batch_size: int) -> None:
    """Mixtures sorted by mean ΔL: mean, std, regret, max passes over a domain pool, weights."""
    domains = report["domains"]
    header = (f"{'mixture':<16}{'mean ΔL':>9}{'std':>8}{'regret':>9}{'max rep':>8}  "
              + " ".join(f"{d[:9]:>9}" for d in domains))
    print(header)
    print("-" * len(header))
    grid = set(report["grid"])
    for name, row in sorted(report["mixtures"].items(), key=lambda kv: kv[1]["mean"]):
        tag = name if name not in grid else f"{name}*"
        weights = " ".join(f"{row['weights'][d]:>9.3f}" for d in domains)
        reps = max(w * steps * batch_size / report["pool_sizes"][d] for d, w in row["weights"].items())
        print(f"{tag[:16]:<16}{row['mean']:>9.4f}{row['std']:>8.4f}{row['regret']:>+9.4f}{reps:>8.1f}  {weights}")
    print("(* grid mixture; regret = mean ΔL − best grid mean ΔL; max rep = most passes over one domain's pool)")


def print_validation(res: dict) -> None:
    """What the refresh's validation saw: candidates, rounds, probes, the published candidate's gains at
    both horizons, and the refresh's compute."""
    v = res["refresh"].get("validation") or {}
    if not v:
        return
    pub = v["candidates"][v["published"]]
    hz = v.get("horizons") or {}
    conf = pub.get("confirmed") or {}
    print(f"validation: {len(v['candidates'])} candidates ({v.get('rounds')}), {v.get('probes')} probes; published "
          f"{v['published']}; first-round best {(v.get('confirmation') or {}).get('first_round_best', v['best'])}")
    if hz:
        sci = conf.get("stage_ci", pub["stage_ci"])
        print(f"  {hz['probe_label']}: {pub['gain']:+.4f} nats; {hz['stage_label']}: "
              f"{conf.get('stage_gain', pub['stage_gain']):+.4f} [{sci[0]:+.4f}, {sci[1]:+.4f}]"
              + (" (fresh seeds)" if conf else ""))
    cost = res["refresh"].get("cost") or {}
    if cost:
        print(f"  refresh cost: {cost['total']:.0f} training-step equivalents (featurize {cost['featurize']:.0f}, "
              f"probes {cost['probes']:.0f}; batch {cost['batch_size']})")


def print_acceptance(results: list[dict]) -> None:
    """Per scenario and overall: the issue's done-when goals."""
    print("\nACCEPTANCE (published = the refresh's published mixture; seed std pooled over all mixtures)")
    covered: list[bool] = []
    for res in results:
        a = res["acceptance"]
        split = res["testbed"]["settings"]["reference_split"]
        gain = f"{a['gain_std']:.2f}" if math.isfinite(a["gain_std"]) else str(a["gain_std"])
        print(f"[{res['scenario']}] ({a['seeds']} seeds, measured on split {split!r})")
        print(f"  published vs uniform = {gain} seed std (goal >= {GOALS['gain_std']:g} "
              f"{'required: ' if a['gain_required'] else 'not required: '}best evaluated mixture "
              f"{a['best_gain_std']:+.2f} std vs uniform, bar {GOALS['any_gain_std']:g})"
              f"   [{a['gain']:+.4f} nats, seed std {a['seed_std']:.4f}]")
        print(f"  worse than uniform beyond noise: {'yes' if a['worse_beyond_noise'] else 'no'} (goal no)"
              f"   [noise = 2 SE of a difference = {a['noise']:.4f} nats]")
        print(f"  regret = {a['regret']:+.3f} nats vs best of grid and baselines {a['best_any']} "
              f"(goal <= {GOALS['regret']:g}); vs grid best {a['best']}: {a['regret_grid']:+.3f}")
        if "covered" in a:
            covered += a["covered"]
            print(f"  stage-horizon CI [{a['stage_ci'][0]:+.4f}, {a['stage_ci'][1]:+.4f}] vs measured per-seed gains "
                  + ", ".join(f"{g:+.4f}{'' if c else ' (outside)'}" for g, c in zip(a["measured_per_seed"], a["covered"])))
        if "cost_ratio" in a:
            print(f"  cost: refresh {a['refresh_steps']:.0f} step equivalents vs the grid it is compared with "
                  f"{a['grid_steps']:.0f} ({len(res['testbed']['grid'])} mixtures x stage steps x seeds): ratio "
                  f"{a['cost_ratio']:.2f} (goal <= {GOALS['cost_ratio']:g}); vs a one-seed grid "
                  f"{a['cost_ratio_one_seed']:.2f}")
        print(f"  {'PASS' if a['passed'] else 'FAIL'}")
    passed = sum(r["acceptance"]["passed"] for r in results)
    print(f"overall: {passed}/{len(results)} scenarios PASS (gain and regret goals)")
    if covered:
        share = sum(covered) / len(covered)
        print(f"stage-horizon CI coverage: {sum(covered)}/{len(covered)} scenario x seed cases = {share:.0%} "
              f"(goal >= {GOALS['coverage']:.0%})")
    ratios = [r["acceptance"]["cost_ratio"] for r in results if "cost_ratio" in r["acceptance"]]
    if ratios:
        print(f"refresh cost / grid cost: max {max(ratios):.2f}, mean {sum(ratios) / len(ratios):.2f} "
              f"(goal <= {GOALS['cost_ratio']:g})")


def run_scenarios(args: argparse.Namespace, names: list[str]) -> None:
    out = tempfile.mkdtemp(prefix="influmix-testbed-")
    cache = args.cache_dir or tempfile.mkdtemp(prefix="influmix-testbed-cache-")
    results = []
    saved = {}
    if args.rescore or args.retest:
        with open(args.rescore or args.retest, encoding="utf-8") as f:
            saved = {r["scenario"]: r for r in json.load(f)}
        names = [n for n in names if n in saved] if names != list(SCENARIOS) else list(saved)
    for name in names:
        started = time.perf_counter()
        if name in saved and args.retest:
            res = retest_scenario(saved[name], f"{out}/{name}", cache_dir=cache, overrides=args.set)
            print(f"\n[{name}] retest: uniform re-measured within {res['retest']['uniform_max_abs_diff']:.2g} nats "
                  "of the saved ground truth")
            ms = res["retest"].get("multi_step")
            if ms:
                print(f"[{name}] influence answers over the stage (test split): first-order {ms['first_order_gain']:+.4f}, "
                      f"multi-step {ms['multi_step_gain']:+.4f} nats over uniform; multi-step − first-order "
                      f"{ms['multi_minus_first']:+.4f} (paired seed std {ms['paired_std']:.4f})")
        elif name in saved:
            try:
                res = rescore_scenario(saved[name], f"{out}/{name}", cache_dir=cache, overrides=args.set)
            except ConfigError as exc:  # the saved result stands, marked as not re-scored
                print(f"\n[{name}] not re-scored: {exc}")
                res = {**saved[name], "refresh": {**saved[name]["refresh"], "rescored": False}}
        else:
            res = run_scenario(name, f"{out}/{name}", cache_dir=cache, overrides=args.set, steps=args.steps,
                               batch_size=args.batch_size, seeds=args.seeds, grid_size=args.grid,
                               per_domain=args.per_domain, reference_examples=args.reference_examples,
                               split=args.split)
        results.append(res)
        rep = res["testbed"]
        st = rep["settings"]
        print(f"\n=== scenario {name}: {res['description']}")
        print(f"refresh {res['refresh']['run_id']}: {res['refresh']['wall_s']:.1f}s; testbed: "
              f"{len(rep['mixtures'])} mixtures x {len(st['seeds'])} seeds x {st['steps']} steps "
              f"(batch {st['batch_size']}, ~{st['steps'] * st['batch_size']} examples; tokens_next_stage "
              f"{res['tokens_next_stage']}) in {res['testbed_wall_s']:.1f}s; total {time.perf_counter() - started:.0f}s")
        print(f"published: {res['refresh']['published_source']} (validation stage's pick); bounds upper: "
              + ", ".join(f"{d} {v:.2f}" for d, v in rep["bounds"]["upper"].items()))
        print(f"pool sizes: {rep['pool_sizes']}")
        print(f"reference: {st['reference_examples']} target examples, split {st['reference_split']!r}; "
              f"loss before training {rep['base_loss']:.4f}  (ΔL < 0: the target loss dropped)")
        for target, halves in res["target_losses"].items():
            print(f"per-token loss of the checkpoint on {target}: "
                  + ", ".join(f"{h} {v:.3f}" for h, v in halves.items()))
        print_table(rep, st["steps"], st["batch_size"])
        print_validation(res)
        others = [n for n in rep["mixtures"] if n.startswith(("solver:", "baseline:"))]
        for baseline in ("uniform", "tokens", *others):
            if baseline in rep["mixtures"]:
                c = compare(rep, PUBLISHED, baseline)
                units = f" ({c['improvement'] / c['seed_std']:+.2f} seed std)" if c["seed_std"] > 0 else ""
                print(f"{PUBLISHED} vs {baseline}: improvement {c['improvement']:+.4f} nats{units}")
        print(f"grid best: {rep['best']} (ΔL {rep['best_mean']:.4f}); pooled seed std {rep['seed_std']:.4f}")

    print_acceptance(results)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default=["all"], nargs="+", choices=["all", *SCENARIOS, "default"],
                        help="harder-testbed scenarios (one or more), all of them (default), or the embedded default")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per mixture and seed (default: the scenario's "
                             "tokens_next_stage budget; 40 for --scenario default)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--grid", type=int, default=None,
                        help="grid size (uniform + corners + Dirichlet; default 13 for scenarios, 11 for default)")
    parser.add_argument("--per-domain", type=int, default=None,
                        help="training pool size per domain (default: every example for scenarios, 64 for default)")
    parser.add_argument("--reference-examples", type=int, default=128)
    parser.add_argument("--split", default="test", help="held-out target split measured by scenarios")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for the scenario refreshes (e.g. mixture.beta=1.0)")
    parser.add_argument("--tikmix-m", action="store_true", help="also evaluate TiKMiX-M (--scenario default)")
    parser.add_argument("--cache-dir", default=None, help="model cache (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the full report to this file")
    parser.add_argument("--retest", default=None, metavar="JSON", help=(
        "a saved --json report: re-run its refreshes with the current code and train only the published "
        "mixture (and uniform, as a check) against its saved ground truth"))
    parser.add_argument("--rescore", default=None, metavar="JSON", help=(
        "a saved --json report: re-run only the refreshes of its scenarios and re-score them against its "
        "ground truth (fails if a published mixture changed)"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.scenario != ["default"]:
        if "default" in args.scenario:
            parser.error("--scenario default runs alone")
        args.grid = args.grid or 13
        args.per_domain = args.per_domain or 100_000
        run_scenarios(args, list(SCENARIOS) if "all" in args.scenario else list(dict.fromkeys(args.scenario)))
        return
    args.steps = args.steps or 40
    args.grid = args.grid or 11
    args.per_domain = args.per_domain or 64

    out = tempfile.mkdtemp(prefix="influmix-testbed-")
    cache = args.cache_dir or tempfile.mkdtemp(prefix="influmix-testbed-cache-")
    overrides = [f"output_uri={out}", f"model.cache_dir={cache}", "sampling.rate=0.2",
                 "influence.bootstrap=40", "cluster.num_workers=2"]
    if args.tikmix_m:
        overrides += ["mixture.solver=tikmix_m"]
    cfg = load_config("default", overrides)
    started = time.perf_counter()
    result = run_mixture_refresh(cfg)
    refresh_s = time.perf_counter() - started
    chosen = result.weights  # the published mixture
    extra = {"tikmix_m": result.weights} if args.tikmix_m else None

    started = time.perf_counter()
    report = run_testbed(cfg, chosen, extra=extra, grid_size=args.grid, steps=args.steps,
                         batch_size=args.batch_size, seeds=args.seeds, per_domain=args.per_domain)
    testbed_s = time.perf_counter() - started

    print(f"refresh {result.run_id}: {refresh_s:.1f}s; testbed: {len(report['mixtures'])} mixtures x "
          f"{len(args.seeds)} seeds x {args.steps} steps (batch {args.batch_size}) in {testbed_s:.1f}s")
    print(f"reference loss before training: {report['base_loss']:.4f}  (ΔL < 0: the target loss dropped)")
    print_table(report, args.steps, args.batch_size)
    names = ["chosen"] + (["tikmix_m"] if args.tikmix_m else [])
    for name in names:
        for baseline in ("uniform", "tokens"):
            c = compare(report, name, baseline)
            print(f"{name} vs {baseline}: improvement {c['improvement']:+.4f} (ΔL ratio {c['ratio']:.2f}), "
                  f"regret {c['regret']:+.4f} vs {baseline} regret {c['baseline_regret']:+.4f}")
    best = report["best"]
    std = report["seed_std"]
    gap = -report["comparison"]["improvement"]
    units = f"{gap / std:+.1f} seed std" if std > 0 else "n/a with one seed"
    print(f"grid best: {best} (ΔL {report['best_mean']:.4f}); pooled seed std {std:.4f}; "
          f"chosen − uniform ΔL {gap:+.4f} ({units})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
