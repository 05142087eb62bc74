"""Calibration: how often does a refresh claim a gain that is not there, and do its CIs cover what it claims?

    python benchmarks/calibration.py [--splits 10] [--testbed-json FILE] [--json FILE] [--set KEY=VALUE ...]

Null scenario (no mixture can truly beat another): the bundled ``docs`` domain (one English text source,
600 documents) is shuffled by a per-split seed; 480 documents are dealt into five pseudo-domains of 96
and the other 120 become the target set. Each split runs a full refresh with the default settings
(validation on) except ``sampling.rate=1`` and 100 bootstrap replicates, and records:

- the primary solver's own answer: total variation from its prior (goal <= 0.15 in every split);
- the published mixture: total variation from the reference (goal <= 0.10 in every split);
- whether a gain was claimed (published != reference with a CI that excludes 0); the rate over splits is
  the false-claim rate (goal <= 10%).

With ``--testbed-json`` (the JSON that ``benchmarks/mixture_testbed.py --json`` writes) it also prints,
per scenario and seed, the published mixture's stage-horizon interval against the gain over uniform
measured on the test split, and the coverage.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from workflows.config import load_config  # noqa: E402
from workflows.mixture_refresh import run_mixture_refresh  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "workflows" / "assets" / "data"
GOALS = {"solver_tv": 0.15, "published_tv": 0.10, "false_claim_rate": 0.10}
DOMAINS = [f"split{i}" for i in range(5)]


def null_split(root: Path, seed: int) -> Path:
    """Write the corpus (five random splits of one source) and the target; return the config path."""
    table = pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(str(ASSETS / "corpus" / "docs-*.parquet")))])
    order = np.random.default_rng(seed).permutation(table.num_rows)
    corpus, target = table.take(order[:480]), table.take(order[480:600])
    (root / "corpus").mkdir(parents=True)
    corpus = corpus.set_column(corpus.schema.get_field_index("domain"), "domain",
                               pa.array([DOMAINS[i % 5] for i in range(corpus.num_rows)]))
    corpus = corpus.set_column(corpus.schema.get_field_index("id"), "id",
                               pa.array([f"c{seed}-{i}" for i in range(corpus.num_rows)]))
    for i in range(2):  # two shards
        pq.write_table(corpus.slice(i * 240, 240), root / "corpus" / f"part-{i}.parquet")
    target = target.set_column(target.schema.get_field_index("id"), "id",
                               pa.array([f"t{seed}-{i}" for i in range(target.num_rows)]))
    pq.write_table(target, root / "target.parquet")
    config = root / "null.yaml"
    config.write_text(
        "defaults: [default]\n"
        f"name: null{seed}\n"
        f"corpus: {{paths: ['{root / 'corpus'}'], domain_column: domain}}\n"
        f"targets: [{{name: same_source, paths: ['{root / 'target.parquet'}'], weight: 1.0}}]\n")
    return config


def _tv(a: dict, b: dict) -> float:
    return 0.5 * sum(abs(a[d] - b.get(d, 0.0)) for d in a)


def run_null(splits: int, workdir: Path, cache_dir: str | None, extra: list[str] = ()) -> list[dict]:
    rows = []
    for seed in range(splits):
        root = workdir / f"split{seed}"
        config = null_split(root, seed)
        overrides = [f"output_uri={root / 'out'}", "sampling.rate=1.0", "influence.bootstrap=100", *extra]
        if cache_dir:
            overrides.append(f"model.cache_dir={cache_dir}")
        t0 = time.monotonic()
        result = run_mixture_refresh(load_config(str(config), overrides))
        report = result.report
        problem = report["problem"]
        prior = {d: 1 / len(problem["domains"]) for d in problem["domains"]}
        solver = report["solvers"]["tikmix_d"]["weights"]
        validation = report.get("validation") or {}
        published = validation.get("published", "tikmix_d")
        cand = validation.get("candidates", {}).get(published, {})
        shown = cand.get("confirmed") or cand  # the numbers the report gives for the published mixture
        claimed = bool(validation) and published != "reference" and shown.get("ci", [0, 0])[0] > 0
        rows.append({"split": seed, "solver_tv": _tv(solver, prior),
                     "published_tv": _tv(result.weights, problem["reference_weights"]), "published": published,
                     "claimed": claimed, "gain": shown.get("gain"), "ci": shown.get("ci"),
                     "max_weight": max(result.weights.values()), "wall_s": time.monotonic() - t0})
        r = rows[-1]
        print(f"split {seed}: solver TV {r['solver_tv']:.3f}  published {published} TV {r['published_tv']:.3f}  "
              f"claimed {claimed}  max weight {r['max_weight']:.3f}  ({r['wall_s']:.0f} s)", flush=True)
    return rows


def summarize_null(rows: list[dict]) -> dict:
    n = len(rows)
    out = {"splits": n,
           "solver_tv_max": max(r["solver_tv"] for r in rows),
           "published_tv_max": max(r["published_tv"] for r in rows),
           "false_claim_rate": sum(r["claimed"] for r in rows) / n,
           "mean_max_weight": float(np.mean([r["max_weight"] for r in rows]))}
    out["pass"] = {"solver_tv": out["solver_tv_max"] <= GOALS["solver_tv"],
                   "published_tv": out["published_tv_max"] <= GOALS["published_tv"],
                   "false_claim_rate": out["false_claim_rate"] <= GOALS["false_claim_rate"]}
    return out


def coverage(testbed: list[dict]) -> dict:
    """Per scenario × seed of a ``mixture_testbed.py --json`` report: the published mixture's reported
    stage-horizon interval against its gain over uniform measured on the test split, and the coverage."""
    cases = []
    for scenario in testbed:
        acc = scenario["acceptance"]
        ci = acc.get("stage_ci")
        for seed, measured, covered in zip(scenario["testbed"]["settings"]["seeds"], acc.get("measured_per_seed") or [],
                                           acc.get("covered") or []):
            cases.append({"scenario": scenario["scenario"], "seed": seed, "ci": ci, "measured": measured,
                          "covered": bool(covered)})
    rate = sum(c["covered"] for c in cases) / len(cases) if cases else None
    return {"cases": cases, "coverage": rate}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", type=int, default=10)
    ap.add_argument("--cache-dir", default=None, help="model cache (default: influmix's)")
    ap.add_argument("--testbed-json", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--set", nargs="*", default=[], help="extra config overrides, e.g. influence.shrinkage=none")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="calib-") as tmp:
        rows = run_null(args.splits, Path(tmp), args.cache_dir, args.set)
    summary = summarize_null(rows)
    print(f"\nNULL ({summary['splits']} independent splits; every domain a random split of one source)"
          + (f"; overrides {args.set}" if args.set else ""))
    print(f"  primary solver TV from prior, max: {summary['solver_tv_max']:.3f}   goal <= {GOALS['solver_tv']}")
    print(f"  published TV from reference, max:  {summary['published_tv_max']:.3f}   goal <= {GOALS['published_tv']}")
    print(f"  false-claim rate (CI excludes 0):  {summary['false_claim_rate']:.2f}    goal <= {GOALS['false_claim_rate']}")
    print(f"  mean largest published weight:     {summary['mean_max_weight']:.3f}   (uniform: 0.200)")
    result = {"null": {"rows": rows, "summary": summary}}
    if args.testbed_json:
        cov = coverage(json.loads(Path(args.testbed_json).read_text()))
        result["coverage"] = cov
        print("\nCOVERAGE (reported CI vs measured gain on the test split)")
        for c in cov["cases"]:
            print(f"  {c['scenario']:<12} seed {c['seed']}: stage-horizon CI {c['ci']} "
                  f"measured {c['measured']:.4f} covered {c['covered']}")
        print(f"  coverage: {cov['coverage']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
