"""Does TiKMiX-M beat TiKMiX-D? Refresh with ``mixture.solver=tikmix_m``, then train on w_D, w_M and uniform.

    python benchmarks/tikmix_m_benefit.py [--config default] [--steps 40] [--seeds 0 1 2 3 4] [--set k=v ...]

The refresh labels candidates on the VALIDATION split (workflows/solvers/tikmix_m_search.py); this script scores
on the TEST split (workflows/testbed.evaluate_mixtures), which the refresh never saw. It prints the label
noise and the regression's held-out error from the solver report, then ΔL per mixture (mean ± std over
seeds) and w_M − w_D in pooled-seed-std units. w_M is the searched mixture even when the solver fell back.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time

import numpy as np

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: benchmarks.testbed

from workflows.config import load_config
from workflows.mixture_refresh import resolve_model_uri, run_mixture_refresh
from workflows.run.plan import build_plan
from benchmarks.testbed.harness import evaluate_mixtures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="default")
    parser.add_argument("--steps", type=int, default=40, help="training steps per mixture and seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--per-domain", type=int, default=64)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--set", nargs="*", default=[], help="extra config overrides (k=v)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = tempfile.mkdtemp(prefix="influmix-tikmix-m-")
    overrides = [f"output_uri={out}", "sampling.rate=0.2", "influence.bootstrap=20", "cluster.num_workers=2",
                 "mixture.solver=tikmix_m", "mixture.compare=[]", "mixture.validation.enabled=false",
                 "mates.enabled=false", *args.set]
    if args.cache_dir:
        overrides.append(f"model.cache_dir={args.cache_dir}")
    cfg = load_config(args.config, overrides)
    t0 = time.perf_counter()
    result = run_mixture_refresh(cfg)
    refresh_s = time.perf_counter() - t0
    m = result.report["solvers"]["tikmix_m"]
    domains = m["domains"]
    reg, noise = m["regressor"], m["label_noise"]
    print(f"refresh {refresh_s:.0f}s (TiKMiX-M {m['wall_s']:.0f}s): {len(m['labels'])} candidates x "
          f"{len(m['seeds'])} seeds x {m['steps']} steps on the validation split")
    print(f"labels: std across candidates {noise['label_std']:.4f}, seed std {noise['seed_std']:.4f}, "
          f"noise of a label {noise['label_noise_std']:.4f} (SNR {noise['snr'] or float('nan'):.2f})")
    print(f"regression: LOO RMSE {reg['cv_rmse']:.4f} vs label std {reg['label_std']:.4f} "
          f"(LOO R² {reg['cv_r2']:.3f}, LOO Spearman {reg['cv_spearman']:.3f}, alpha {reg['alpha']:.3g})")
    print(f"solver: fell_back={m['fell_back']}: {m['reason']}")
    mixtures = {"tikmix_d": m["tikmix_d"], "uniform": {d: 1 / len(domains) for d in domains}}
    if "tikmix_m" in m:
        mixtures["tikmix_m"] = m["tikmix_m"]
    t0 = time.perf_counter()
    report = evaluate_mixtures(cfg, build_plan(cfg), resolve_model_uri(cfg), mixtures,
                               args.steps, 8, args.seeds, args.per_domain)
    rows = report["mixtures"]
    print(f"test split: {args.steps} steps x {len(args.seeds)} seeds in {time.perf_counter() - t0:.0f}s")
    print(f"{'mixture':<10}{'mean ΔL':>10}{'std':>8}  " + " ".join(f"{d[:9]:>9}" for d in domains))
    for name, row in rows.items():
        print(f"{name:<10}{row['mean']:>10.4f}{row['std']:>8.4f}  "
              + " ".join(f"{row['weights'].get(d, 0.0):>9.3f}" for d in domains))
    std = report["seed_std"]
    se = std * math.sqrt(2 / len(args.seeds))
    for name in [n for n in ("tikmix_m", "uniform") if n in rows]:
        gain = rows["tikmix_d"]["mean"] - rows[name]["mean"]
        print(f"{name} vs tikmix_d: gain {gain:+.4f} nats = {gain / std:+.2f} seed std "
              f"({gain / se:+.2f} standard errors of the difference)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"solver": m, "test": report}, f, indent=1, default=float)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
