"""Featurization throughput with 1 and 2 actors on the embedded default (prints the ratio).

    python benchmarks/featurize_throughput.py [--rate 0.5] [--gpus auto|never]

Each measurement featurizes the same shards into a fresh run directory on a fresh local Ray cluster;
the model checkpoint is built once beforehand so only featurization is timed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime

import ray

from cluster.runtime import init_ray
from operators import datastore
from workflows.config import load_config
from workflows.featurize_stage import run_featurize
from workflows.mixture_refresh import prepare_run


def measure(workers: int, rate: float, gpus: str, cache: str) -> tuple[float, float, int]:
    out = tempfile.mkdtemp(prefix=f"influmix-bench-{workers}-")
    cfg = load_config("default", [f"output_uri={out}", f"model.cache_dir={cache}", f"sampling.rate={rate}",
                                  f"cluster.num_workers={workers}", f"cluster.use_gpus={gpus}",
                                  "cluster.cpus_per_worker=1"])
    plan, model_uri = prepare_run(cfg)
    init_ray(cfg.cluster)
    try:
        started = time.perf_counter()
        run_featurize(cfg, plan, model_uri)
        elapsed = time.perf_counter() - started
    finally:
        ray.shutdown()
    records = list(datastore.list_completions(plan.root).values())
    examples = sum(r.n_examples for r in records)
    busy = max(datetime.fromisoformat(r.finished_at) for r in records) - min(
        datetime.fromisoformat(r.started_at) for r in records)
    return elapsed, busy.total_seconds(), examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=0.5)
    parser.add_argument("--gpus", default="auto", choices=["auto", "never"])
    args = parser.parse_args()
    cache = tempfile.mkdtemp(prefix="influmix-bench-cache-")
    steady, total = {}, {}
    for workers in (1, 2):
        elapsed, busy, examples = measure(workers, args.rate, args.gpus, cache)
        steady[workers], total[workers] = examples / busy, examples / elapsed
        print(f"{workers} actor(s): {examples} examples; shard processing {busy:.1f}s -> {steady[workers]:.1f} "
              f"examples/s; stage wall {elapsed:.1f}s (with actor start-up) -> {total[workers]:.1f} examples/s")
    print(f"throughput ratio 2 actors / 1 actor: {steady[2] / steady[1]:.2f} (shard processing), "
          f"{total[2] / total[1]:.2f} (stage wall time)")


if __name__ == "__main__":
    main()
