"""Probe trainings inside Ray tasks: train the checkpoint briefly on candidate mixtures, return ΔL."""

from __future__ import annotations

import numpy as np

from cluster.parallel import parallel_map
from operators.model.loading import ModelSource, checkpoint_adam_state
from operators.training.probing import ProbeSpec, probe_mixture, probe_trajectory


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


def measure_trajectories(prober: MixtureProber, mixtures: list[np.ndarray], seeds: list[int],
                         layout) -> tuple[np.ndarray, np.ndarray]:
    """(before (n_mixtures, n_seeds, n_examples), after (n_mixtures, n_seeds, n_points, n_examples)) summed
    per-example losses of a ``points`` prober, one Ray task per worker slot."""
    if not prober.points:
        raise ValueError("measure_trajectories needs a MixtureProber with points")
    items = [(np.asarray(w).tolist(), s) for w in mixtures for s in seeds]
    out = parallel_map(prober, items, layout)
    before = np.array([b for b, _ in out]).reshape(len(mixtures), len(seeds), -1)
    after = np.array([a for _, a in out]).reshape(len(mixtures), len(seeds), len(prober.points), -1)
    return before, after
