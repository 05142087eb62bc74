"""Shared helpers for workflow tests: fast overrides of the embedded default."""

from __future__ import annotations

import pyarrow as pa

from workflows.config import RunConfig, load_config
from workflows.jobs.examples import ExampleSource, read_task_rows
from workflows.run.plan import Plan


def fast_overrides(output_uri: str, cache_dir: str, *extra: str) -> list[str]:
    return [
        f"output_uri={output_uri}",
        f"model.cache_dir={cache_dir}",
        "sampling.rate=0.2",
        "influence.bootstrap=40",
        "cluster.num_workers=2",
        "cluster.progress_interval_s=1",
        *extra,
    ]


def fast_config(output_uri: str, cache_dir: str, *extra: str) -> RunConfig:
    return load_config("default", fast_overrides(output_uri, cache_dir, *extra))


def expected_ids(cfg: RunConfig, plan: Plan) -> set[str]:
    """Ids featurization must produce exactly once: the sampled corpus rows."""
    ids: set[str] = set()
    for task in plan.corpus_tasks():
        table: pa.Table = read_task_rows(ExampleSource.of(cfg), task)
        ids.update(table.column("id").to_pylist())
    return ids
