"""Distributed MATES selection over the per-shard score files (three map passes on Ray, exact).

1. moments: per shard and domain, count, Σs, Σs², min, max → per-domain mean/std, availability, quotas;
2. histogram: per shard, perturbed keys ``−z/τ + G`` (G seeded by (seed, domain, shard)) binned on a
   per-domain range (2^16 bins, returned sparse) → the bin holding each domain's quota-th key
   (operators/selection/quotas.threshold_bin);
3. emit: per shard, ids with keys above that bin go to ``<root>/mates/selected/<key>/<shard>/<domain>.txt``
   and the rows inside the bin come back (few); the driver picks the remainder by (key, id) and streams
   the per-shard files into ``selection/<domain>.txt``.

The driver holds per-domain histograms and boundary rows only, never the pool. The result is the
exact top-quota of the perturbed keys, identical for any number of workers; per-shard outputs use
deterministic keys, so retries overwrite identical objects.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from cluster.parallel import map_shards
from cluster.runtime import WorkerLayout
from operators.io import storage
from operators.io.names import path_component
from operators.selection.quotas import (
    KEY_BINS,
    domain_quotas,
    domain_seed,
    key_bins,
    key_range,
    selection_keys,
    standardize,
    threshold_bin,
)
from workflows.jobs.mates_score_shard import scores_uri


def _read(root: str, shard_id: str, spec: storage.StorageSpec) -> tuple[list[str], np.ndarray, np.ndarray]:
    table = pq.read_table(io.BytesIO(storage.read_bytes(scores_uri(root, shard_id), spec)))
    ids = table.column("id").to_pylist()
    domains = np.asarray(table.column("domain").to_pylist(), dtype=object)
    return ids, domains, table.column("score").to_numpy().astype(np.float64)


@dataclass(frozen=True)
class MomentsJob:
    """Pass 1: {domain: [count, Σs, Σs², min, max]} of one score shard."""

    root: str
    spec: storage.StorageSpec

    def __call__(self, shard_id: str) -> dict[str, list[float]]:
        _, domains, scores = _read(self.root, shard_id, self.spec)
        out = {}
        for d in sorted(set(domains.tolist())):
            s = scores[domains == d]
            out[d] = [float(s.size), float(s.sum()), float((s**2).sum()), float(s.min()), float(s.max())]
        return out


@dataclass(frozen=True)
class KeyJob:
    """Passes 2 and 3 on one score shard; ``threshold`` None → per-domain key histograms."""

    root: str
    spec: storage.StorageSpec
    params: dict  # domain -> {"mean", "std", "lo", "hi"} for domains with a positive quota
    temperature: float
    seed: int
    out_prefix: str = ""
    threshold: dict | None = None  # domain -> threshold bin

    def _keys(self, shard_id: str):
        ids, domains, scores = _read(self.root, shard_id, self.spec)
        for d in sorted(set(domains.tolist()) & set(self.params)):
            idx = np.flatnonzero(domains == d)
            p = self.params[d]
            rng = np.random.default_rng(domain_seed(self.seed, f"{d}\x00{shard_id}"))
            keys = selection_keys(scores[idx], p["mean"], p["std"], self.temperature, rng, higher_is_better=False)
            yield d, idx, keys, key_bins(keys, p["lo"], p["hi"]), ids, scores

    def __call__(self, shard_id: str) -> dict:
        if self.threshold is None:
            out = {}
            for d, _, _, b, _, _ in self._keys(shard_id):  # sparse: at most one entry per row
                idx, n = np.unique(b, return_counts=True)
                out[d] = (idx.astype(np.int32), n.astype(np.int64))
            return out
        out: dict = {}
        for d, idx, keys, bins, ids, scores in self._keys(shard_id):
            t = self.threshold[d]
            above = idx[bins > t]
            text = "".join(f"{ids[i]}\n" for i in above)
            storage.write_text_atomic(storage.join(self.out_prefix, shard_id, f"{d}.txt"), text, self.spec)
            edge = bins == t
            out[d] = {"n": int(above.size), "sum": float(scores[above].sum()),
                      "edge": [(float(k), ids[i], float(scores[i])) for k, i in zip(keys[edge], idx[edge])]}
        return out


def _stream_concat(parts: list[str], extra: list[str], dest: str, spec: storage.StorageSpec) -> None:
    """Write ``dest`` = the per-shard files in order + ``extra`` ids, without holding them in memory."""
    with storage.storage_for(dest, spec).atomic_writer(dest) as out:  # visible only when complete
        for part in parts:
            store = storage.storage_for(part, spec)
            if store.exists(part):
                with store.open(part) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        out.write("".join(f"{i}\n" for i in extra).encode())


def select_distributed(root: str, shard_ids: list[str], weights: dict[str, float], ratio: float,
                       temperature: float, seed: int, out_dir: str, spec: storage.StorageSpec,
                       workers: WorkerLayout, retries: int = 2) -> tuple[dict[str, int], dict]:
    """Select each domain's quota by Gumbel-top-k of standardised scores; returns ({domain: count}, report).

    Writes ``<out_dir>/selection/<domain>.txt`` for every domain in ``weights``.
    """
    moments: dict[str, np.ndarray] = {}
    for part in map_shards(MomentsJob(root, spec), shard_ids, workers, retries):
        for d, (n, s1, s2, lo, hi) in part.items():
            m = moments.get(d)
            moments[d] = (np.array([n, s1, s2, lo, hi]) if m is None else
                          np.array([m[0] + n, m[1] + s1, m[2] + s2, min(m[3], lo), max(m[4], hi)]))
    pool = int(sum(m[0] for m in moments.values()))
    available = {d: int(moments[d][0]) if d in moments else 0 for d in weights}
    budget = int(round(ratio * pool))
    quotas = domain_quotas(weights, budget, available)
    params = {}
    for d, q in quotas.items():
        if q > 0:
            n, s1, s2, lo, hi = moments[d]
            mean, std = standardize(int(n), s1, s2)
            k_lo, k_hi = key_range((lo - mean) / std, (hi - mean) / std, temperature, higher_is_better=False)
            params[d] = {"mean": mean, "std": std, "lo": k_lo, "hi": k_hi}
    job = KeyJob(root, spec, params, temperature, seed)
    hists = {d: np.zeros(KEY_BINS, dtype=np.int64) for d in params}
    for part in map_shards(job, shard_ids, workers, retries):
        for d, (idx, n) in part.items():
            hists[d][idx] += n
    cut = {d: threshold_bin(hists[d], quotas[d]) for d in params}
    tag = hashlib.sha256(json.dumps([params, temperature, seed, cut], sort_keys=True).encode()).hexdigest()[:16]
    prefix = storage.join(root, "mates", "selected", tag)
    emit = KeyJob(root, spec, params, temperature, seed, prefix, {d: b for d, (b, _) in cut.items()})
    edges: dict[str, list] = {d: [] for d in params}
    chosen_sum = {d: 0.0 for d in params}
    for part in map_shards(emit, shard_ids, workers, retries):
        for d, r in part.items():
            edges[d] += r["edge"]
            chosen_sum[d] += r["sum"]
    counts, mean_selected = {}, {}
    for d in sorted(weights):
        extra: list[str] = []
        if d in params:
            need = quotas[d] - cut[d][1]
            picked = sorted(edges[d], key=lambda e: (-e[0], e[1]))[:need]
            extra = [e[1] for e in picked]
            chosen_sum[d] += sum(e[2] for e in picked)
            mean_selected[d] = chosen_sum[d] / quotas[d]
        parts = [storage.join(prefix, s, f"{d}.txt") for s in shard_ids] if d in params else []
        _stream_concat(parts, extra, selection_uri(out_dir, d), spec)
        counts[d] = quotas[d]
    total = sum(m[1] for m in moments.values())
    report = {"quotas": quotas, "pool_size": pool, "budget": budget, "available": available, "mean_score_selected": mean_selected,
              "mean_score_pool": float(total / pool) if pool else None,
              "score_std": {d: p["std"] for d, p in params.items()}}
    return counts, report


def selection_uri(out_dir: str, domain: str) -> str:
    """Where a domain's selected ids go; the domain is untrusted data, so it passes path_component."""
    return storage.join(out_dir, "selection", f"{path_component(domain, 'domain')}.txt")
