"""Probe trainings inside Ray tasks: train the checkpoint briefly on candidate mixtures, return ΔL."""

from __future__ import annotations

import hashlib
import io
import json
import logging

import numpy as np

from cluster.parallel import parallel_map
from operators.io import storage
from operators.model.loading import ModelSource, checkpoint_adam_state
from operators.training.probing import ProbeSpec, probe_mixture, probe_trajectory


log = logging.getLogger(__name__)


class MixtureProber:
    """Picklable probe job: load the checkpoint once per task, return ΔL for (weights, seed) items.

    ``pools`` maps each seed to its per-domain pools (one shared pool dict for every seed is fine); a
    seed also fixes each domain's example order (operators/training/blend.py), so candidates measured with
    the same seed are paired. The checkpoint's AdamW state is continued when it has one. With ``points``
    (step counts, the last = ``steps``) an item returns instead (before, after) per-example summed losses
    (:func:`operators.training.probing.probe_trajectory`).
    """

    def __init__(self, model: ModelSource, domains: list[str], pools: dict[int, dict], ref, steps: int,
                 batch_size: int, probe: ProbeSpec, per_example: bool = False,
                 points: list[int] | None = None) -> None:
        self.model, self.domains, self.pools, self.ref = model, domains, pools, ref
        self.steps, self.batch_size, self.probe, self.per_example = steps, batch_size, probe, per_example
        self.points = points

    def __call__(self, items: list[tuple[list[float], int]], device: str) -> list:
        loaded = self.model.load(device, dtype="float32")
        adam = checkpoint_adam_state(loaded, self.model.optimizer_state)
        out = []
        for weights, seed in items:
            pools = self.pools[seed]
            w = {d: float(x) for d, x in zip(self.domains, weights) if x > 0 and d in pools}
            if self.points:
                out.append(probe_trajectory(loaded.model, pools, w, self.points, self.batch_size, self.ref[0],
                                            self.ref[1], self.probe, seed, optimizer_state=adam))
                continue
            delta = probe_mixture(loaded.model, pools, w, self.steps, self.batch_size, self.ref[0], self.ref[1],
                                  self.probe, seed, optimizer_state=adam, per_example=self.per_example)
            out.append(delta if self.per_example else float(delta))
        return out


def measure(prober: MixtureProber, mixtures: list[np.ndarray], seeds: list[int], layout) -> np.ndarray:
    """(n_mixtures, n_seeds[, n_examples]) ΔL, one Ray task per worker slot."""
    items = [(np.asarray(w).tolist(), s) for w in mixtures for s in seeds]
    out = np.array(parallel_map(prober, items, layout))
    return out.reshape(len(mixtures), len(seeds), *out.shape[1:])


def _tensor_bytes(x) -> bytes:
    return np.ascontiguousarray(x.cpu().numpy() if hasattr(x, "cpu") else np.asarray(x)).tobytes()


def prober_digest(prober: MixtureProber) -> str:
    """Hash of everything a probe result depends on except (weights, seed): the checkpoint, the examples of
    every pool and of the reference set, and the probe settings."""
    h = hashlib.sha256()
    m = prober.model
    h.update(json.dumps([m.uri, m.dtype, m.optimizer_state, prober.domains, prober.steps, prober.batch_size,
                         prober.probe.model_dump(mode="json"), prober.points, prober.per_example],
                        sort_keys=True, default=str).encode())
    for seed in sorted(prober.pools):
        h.update(f"seed {seed}".encode())
        for domain in sorted(prober.pools[seed]):
            h.update(domain.encode())
            for part in prober.pools[seed][domain]:
                h.update(_tensor_bytes(part))
    for part in prober.ref:
        h.update(_tensor_bytes(part))
    return h.hexdigest()


class ProbeCache:
    """Probe results kept on storage, addressed by their inputs (``prober_digest``, weights, seed), so a
    later refresh on the same checkpoint and data reuses every probe it repeats (the reference, baselines,
    exploration mixtures) instead of training it again. Content addressing means a hit is the same
    computation; nothing can be stale."""

    def __init__(self, root: str, spec: storage.StorageSpec | None, prober: MixtureProber) -> None:
        self.root, self.spec, self.digest = root, spec, prober_digest(prober)
        self.hits = self.misses = 0

    def uri(self, weights: list[float], seed: int) -> str:
        key = hashlib.sha256(f"{self.digest}|{seed}|".encode() + np.asarray(weights, np.float64).tobytes())
        return storage.join(self.root, f"{key.hexdigest()[:32]}.npz")

    def get(self, weights: list[float], seed: int):
        uri = self.uri(weights, seed)
        try:
            if not storage.exists(uri, self.spec):
                return None
            with np.load(io.BytesIO(storage.read_bytes(uri, self.spec))) as z:
                return z["before"], z["after"]
        except (OSError, ValueError, KeyError, storage.StorageError) as exc:  # unreadable: measure again
            log.warning("probe cache entry %s unreadable (%s); probing again", uri, exc)
            return None

    def put(self, weights: list[float], seed: int, result) -> None:
        buf = io.BytesIO()
        np.savez(buf, before=np.asarray(result[0]), after=np.asarray(result[1]))
        try:
            storage.write_bytes_atomic(self.uri(weights, seed), buf.getvalue(), self.spec)
        except storage.StorageError as exc:  # a cache: the run goes on without it
            log.warning("cannot write probe cache entry: %s", exc)


def measure_trajectories(prober: MixtureProber, mixtures: list[np.ndarray], seeds: list[int],
                         layout, cache: ProbeCache | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(before (n_mixtures, n_seeds, n_examples), after (n_mixtures, n_seeds, n_points, n_examples)) summed
    per-example losses of a ``points`` prober, one Ray task per worker slot; with ``cache``, only the
    (mixture, seed) items it does not hold are trained."""
    if not prober.points:
        raise ValueError("measure_trajectories needs a MixtureProber with points")
    items = [(np.asarray(w, dtype=np.float64).tolist(), s) for w in mixtures for s in seeds]
    cached = [cache.get(w, s) if cache is not None else None for w, s in items]
    todo = [i for i, c in enumerate(cached) if c is None]
    fresh = parallel_map(prober, [items[i] for i in todo], layout) if todo else []
    for i, result in zip(todo, fresh):
        cached[i] = result
        if cache is not None:
            cache.put(*items[i], result)
    if cache is not None:
        cache.hits += len(items) - len(todo)
        cache.misses += len(todo)
    out = cached
    before = np.array([b for b, _ in out]).reshape(len(mixtures), len(seeds), -1)
    after = np.array([a for _, a in out]).reshape(len(mixtures), len(seeds), len(prober.points), -1)
    return before, after
