"""Distributed MATES selection over score shards on a real local Ray cluster."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.runtime import WorkerLayout
from operators.io import storage
from operators.selection.quotas import domain_seed, selection_keys, standardize
from workflows.jobs.mates_score_shard import scores_uri
from workflows.jobs.mates_select import select_distributed

pytestmark = pytest.mark.slow

WEIGHTS = {"code": 0.5, "web": 0.3, "books": 0.2}


def _pool(root: str, shards: int = 4, rows: int = 500, seed: int = 0) -> tuple[list[str], dict]:
    """Score shards in raw MATES units (ΔL, std ≈ 0.003), like the data influence model predicts."""
    rng = np.random.default_rng(seed)
    data: dict = {"ids": [], "domains": [], "scores": [], "shard": []}
    for s in range(shards):
        doms = rng.choice(list(WEIGHTS), size=rows, p=[0.4, 0.4, 0.2])
        scores = (rng.normal(0.0, 0.003, size=rows) - 0.01).astype(np.float32)
        ids = [f"{d}-{s}-{i}" for i, d in enumerate(doms)]
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({"id": ids, "domain": doms.tolist(), "score": scores}), sink)
        storage.write_bytes_atomic(scores_uri(root, f"c{s}"), sink.getvalue().to_pybytes())
        for key, value in (("ids", ids), ("domains", doms.tolist()), ("scores", scores.tolist()),
                           ("shard", [f"c{s}"] * rows)):
            data[key] += value
    return [f"c{s}" for s in range(shards)], {k: np.asarray(v) for k, v in data.items()}


def _selected(out: str) -> dict[str, list[str]]:
    return {d: storage.read_text(storage.join(out, "selection", f"{d}.txt")).split() for d in WEIGHTS}


def _reference(data: dict, quotas: dict, tau: float, seed: int) -> dict[str, set[str]]:
    """Same keys computed in memory over the whole pool, then a global top-quota per domain."""
    out = {}
    for d, q in quotas.items():
        m = data["domains"] == d
        s = data["scores"][m].astype(np.float64)
        mean, std = standardize(s.size, s.sum(), (s**2).sum())
        keys, ids = [], []
        for shard in dict.fromkeys(data["shard"].tolist()):
            sm = m & (data["shard"] == shard)
            rng = np.random.default_rng(domain_seed(seed, f"{d}\x00{shard}"))
            keys += selection_keys(data["scores"][sm], mean, std, tau, rng, False).tolist()
            ids += data["ids"][sm].tolist()
        order = sorted(range(len(ids)), key=lambda i: (-keys[i], ids[i]))[:q]
        out[d] = {ids[i] for i in order}
    return out


def test_selection_is_exact_worker_invariant_and_better_than_random(ray_cluster, tmp_path):
    root = str(tmp_path / "run")
    shards, data = _pool(root)
    kwargs = dict(weights=WEIGHTS, ratio=0.2, temperature=0.5, seed=3, spec=storage.StorageSpec())
    counts, report = select_distributed(root, shards, out_dir=str(tmp_path / "a"),
                                        workers=WorkerLayout(2, 0.0, 1.0), **kwargs)
    chosen = _selected(str(tmp_path / "a"))
    assert sum(counts.values()) == round(0.2 * len(data["ids"])) == report["budget"]
    assert {d: len(v) for d, v in chosen.items()} == counts == report["quotas"]
    assert {d: set(v) for d, v in chosen.items()} == _reference(data, report["quotas"], 0.5, 3)
    one, _ = select_distributed(root, shards, out_dir=str(tmp_path / "b"), workers=WorkerLayout(1, 0.0, 1.0),
                                **kwargs)
    assert {d: sorted(v) for d, v in _selected(str(tmp_path / "b")).items()} == \
        {d: sorted(v) for d, v in chosen.items()}
    # Lower ΔL is better: the selected mean must beat random selection by far more than its noise.
    for d, picked in chosen.items():
        pool = data["scores"][data["domains"] == d].astype(np.float64)
        sel = data["scores"][np.isin(data["ids"], picked)].astype(np.float64)
        random_se = pool.std() / np.sqrt(sel.size) * np.sqrt(1 - sel.size / pool.size)
        assert sel.mean() < pool.mean() - 6 * random_se, d
        assert report["mean_score_selected"][d] == pytest.approx(sel.mean(), rel=1e-5)


def test_zero_temperature_is_deterministic_bottom_k(ray_cluster, tmp_path):
    root = str(tmp_path / "run")
    shards, data = _pool(root, shards=3, rows=300, seed=1)
    counts, _ = select_distributed(root, shards, WEIGHTS, 0.3, 0.0, 0, str(tmp_path / "o"), storage.StorageSpec(),
                                   WorkerLayout(2, 0.0, 1.0))
    for d, picked in _selected(str(tmp_path / "o")).items():
        m = data["domains"] == d
        order = np.lexsort((data["ids"][m], data["scores"][m].astype(np.float64)))
        assert set(picked) == set(data["ids"][m][order[: counts[d]]].tolist())
