"""Aggregation scaling: rows/s with 1 and 2 workers and the driver's peak RSS, on synthetic feature shards.

Goals (docs/SCALING.md): the driver's peak RSS stays flat in N and under 1 GiB at 10^7 rows; 2 workers are at
least 1.6x faster than 1 on an otherwise idle machine.

Feature shards (k=1024 float32, zstd Parquet like featurization writes) are generated on disk by Ray
tasks in row groups, so neither generation nor aggregation loads a shard into the driver. 10^7 rows
are 40 GiB on disk and take about an hour on 2 cores: run them explicitly with
``--rows 100000,1000000,10000000 --dir /big/disk``. Runs at each size are interleaved (1 worker,
then 2 workers, ``--repeats`` times) in one process; the speedup is the ratio of median times.

    python benchmarks/aggregate_scaling.py                       # 10^5 and 10^6 rows
    python benchmarks/aggregate_scaling.py --rows 20000 --dim 256 # smoke run
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from cluster.parallel import map_shards  # noqa: E402
from cluster.runtime import WorkerLayout  # noqa: E402
from operators.features import datastore  # noqa: E402

DOMAINS = ["arxiv", "books", "code", "web", "wiki"]
TARGETS = ["target_mixed", "val_code", "val_docs"]


@dataclass(frozen=True)
class Generate:
    """Write one synthetic feature shard in row groups (memory: one group)."""

    root: str
    dim: int
    group_rows: int = 8192

    def __call__(self, item: tuple[str, int, int, str | None]) -> int:
        shard_id, rows, seed, target = item
        rng = np.random.default_rng(seed)
        shift = np.random.default_rng(0).normal(scale=0.3, size=(len(DOMAINS), self.dim)).astype(np.float32)
        path = datastore.legacy_feature_uri(self.root, shard_id)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        schema = datastore.feature_schema(self.dim, "synthetic")
        with pq.ParquetWriter(path + ".tmp", schema, compression="zstd") as writer:
            for start in range(0, rows, self.group_rows):
                m = min(self.group_rows, rows - start)
                codes = rng.integers(0, len(DOMAINS), size=m)
                feats = rng.standard_normal((m, self.dim), dtype=np.float32)
                feats += shift[codes]
                doms = [target] * m if target else [DOMAINS[c] for c in codes]
                flat = pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1)), self.dim)
                writer.write_table(pa.Table.from_arrays(
                    [pa.array([f"{shard_id}-{start + i}" for i in range(m)]), pa.array(doms),
                     pa.array(rng.integers(16, 512, size=m).astype(np.int32)), pa.array(np.zeros(m, np.float32)),
                     flat], schema=schema))
        os.replace(path + ".tmp", path)
        return rows


def _plan(root: str, n_rows: int, shard_rows: int):
    from workflows.run.plan import Plan, ShardTask

    items, tasks = [], []
    for s, start in enumerate(range(0, n_rows, shard_rows)):
        sid = f"c{s:05d}"
        items.append((sid, min(shard_rows, n_rows - start), s + 1, None))
        tasks.append(ShardTask(shard_id=sid, uri=sid, format="parquet", role="corpus"))
    for v, name in enumerate(TARGETS):
        items.append((f"t-{name}", 2000, 10_000 + v, name))
        tasks.append(ShardTask(shard_id=f"t-{name}", uri=name, format="parquet", role="target", target_name=name))
    return Plan(run_id=f"bench-{n_rows}", root=root, tasks=tuple(tasks)), items


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="100000,1000000", help="comma list of corpus sizes")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--shard-rows", type=int, default=50_000)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--dir", default=None, help="where shards go (default: a temp dir, removed after)")
    args = ap.parse_args()
    sizes = sorted(int(x) for x in args.rows.split(","))

    import ray

    from workflows.stages.aggregate import aggregate_influence
    from workflows.config import load_config

    ray.init(num_cpus=2, logging_level="ERROR", include_dashboard=False)
    base = args.dir or tempfile.mkdtemp(prefix="influmix-aggbench-")
    print("goal: driver peak RSS flat in N and < 1024 MiB at 10^7 rows; 2 workers >= 1.6x faster than 1")
    print(f"dim={args.dim} shard_rows={args.shard_rows} bootstrap={args.bootstrap} dir={base} "
          f"baseline_driver_rss_mib={_peak_rss_mib():.0f}")
    speedup = float("nan")
    try:
        for n in sizes:
            root = os.path.join(base, f"n{n}")
            plan, items = _plan(root, n, args.shard_rows)
            t0 = time.perf_counter()
            sum(map_shards(Generate(root, args.dim), items, WorkerLayout(2, 0.0, 1.0)))
            gen_s = time.perf_counter() - t0
            times: dict[int, list[float]] = {1: [], 2: []}
            for _ in range(args.repeats):
                for workers in (1, 2):
                    shutil.rmtree(os.path.join(root, "influence"), ignore_errors=True)  # no resume
                    cfg = load_config("default", [f"output_uri={base}", f"cluster.num_workers={workers}",
                                                  f"influence.bootstrap={args.bootstrap}"])
                    t0 = time.perf_counter()
                    result = aggregate_influence(cfg, plan, DOMAINS)
                    times[workers].append(time.perf_counter() - t0)
                    assert sum(result.counts.values()) == n
            t1, t2 = statistics.median(times[1]), statistics.median(times[2])
            speedup = t1 / t2
            print(f"rows={n} generate_s={gen_s:.1f} rows_per_s_1_worker={n / t1:.0f} "
                  f"rows_per_s_2_workers={n / t2:.0f} speedup_2_workers={speedup:.2f} "
                  f"driver_peak_rss_mib={_peak_rss_mib():.0f}", flush=True)
            if args.dir is None:
                shutil.rmtree(root, ignore_errors=True)
    finally:
        ray.shutdown()
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    print(f"rows={sizes[-1]} driver_peak_rss_mib={_peak_rss_mib():.0f} speedup_2_workers={speedup:.2f}")


if __name__ == "__main__":
    main()
