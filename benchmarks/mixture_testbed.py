"""Mixture testbed: train the tiny default model on candidate mixtures, print regret vs a small grid.

    python benchmarks/mixture_testbed.py [--steps 40] [--seeds 0 1 2] [--grid 11] [--tikmix-m]

Runs the embedded default refresh (fast settings: sampling.rate=0.2, 40 bootstrap draws) into a temp
output dir, then continues training its checkpoint on each mixture (chosen = TiKMiX-D, uniform,
token-proportional, grid: domain-heavy corners and Dirichlet samples) and measures the change of the
target loss ΔL (lower is better) on a reference set mixed from the config's targets. With
``--tikmix-m`` the refresh also runs TiKMiX-M (mixture.solver=tikmix_m) and both are evaluated.
About 2-4 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time

from workflows.config import load_config
from workflows.mixture_refresh import run_mixture_refresh
from workflows.testbed import compare, run_testbed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="training steps per mixture and seed")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--grid", type=int, default=11, help="grid size (uniform + corners + Dirichlet)")
    parser.add_argument("--per-domain", type=int, default=64, help="training pool size per domain")
    parser.add_argument("--tikmix-m", action="store_true", help="also evaluate TiKMiX-M")
    parser.add_argument("--cache-dir", default=None, help="model cache (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the full report to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

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
    chosen = result.report.get("tikmix_d", result.weights)
    extra = {"tikmix_m": result.weights} if args.tikmix_m else None

    started = time.perf_counter()
    report = run_testbed(cfg, chosen, extra=extra, grid_size=args.grid, steps=args.steps,
                         batch_size=args.batch_size, seeds=args.seeds, per_domain=args.per_domain)
    testbed_s = time.perf_counter() - started

    domains = report["domains"]
    print(f"refresh {result.run_id}: {refresh_s:.1f}s; testbed: {len(report['mixtures'])} mixtures x "
          f"{len(args.seeds)} seeds x {args.steps} steps (batch {args.batch_size}) in {testbed_s:.1f}s")
    print(f"reference loss before training: {report['base_loss']:.4f}  (ΔL < 0: the target loss dropped)")
    header = (f"{'mixture':<16}{'mean ΔL':>9}{'std':>8}{'regret':>9}  "
              + " ".join(f"{d[:9]:>9}" for d in domains))
    print(header)
    print("-" * len(header))
    grid = set(report["grid"])
    for name, row in sorted(report["mixtures"].items(), key=lambda kv: kv[1]["mean"]):
        tag = name if name not in grid else f"{name}*"
        weights = " ".join(f"{row['weights'][d]:>9.3f}" for d in domains)
        print(f"{tag[:16]:<16}{row['mean']:>9.4f}{row['std']:>8.4f}{row['regret']:>+9.4f}  {weights}")
    print("(* grid mixture; regret = mean ΔL − best grid mean ΔL)")
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
