"""Group influence averaged over the last N checkpoints (LESS / TracIn style, ``model.average_checkpoints``).

Influence measured at one checkpoint reflects that moment of training; TracIn and LESS sum it over
several checkpoints of the trajectory. With ``model.average_checkpoints = N > 1`` and a
``model.checkpoint_root``, a refresh featurizes each of the last N checkpoints (up to the one the
refresh resolved; the run pins them in ``model.checkpoints``, which may also be listed by hand) into its own sub-root ``runs/<run_id>/ckpt-<step>/`` (own plan copy, completion
records and featurizer.json, so resume stays exact per checkpoint), aggregates group influence per
checkpoint, and uses the AVERAGE ``GI = mean over checkpoints of GI_c`` (the sampled examples are the
same, sampling depends only on ids); bootstrap intervals come from the newest checkpoint. The chosen checkpoints are pinned in
``runs/<run_id>/checkpoints.json``; a resume whose checkpoint root moved on is refused.

Fewer than N checkpoints is an error. With N = 1 everything is the single-checkpoint path, unchanged: one plan at
the run root, :func:`workflows.stages.aggregate.aggregate_influence` as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from operators.io import storage
from operators.model.checkpoints import list_checkpoints, parse_step
from operators.errors import ConfigError, InfluMixError
from operators.influence.group import combine_targets, normalize_per_target
from workflows.run.keys import featurizer_store
from workflows.run.plan import Plan, check_or_record_plan

if TYPE_CHECKING:
    from workflows.config import RunConfig
    from workflows.stages.aggregate import InfluenceResult

log = logging.getLogger(__name__)
CHECKPOINTS_FILE = "checkpoints.json"

__all__ = ["CheckpointSet", "plan_checkpoints", "featurize_all", "average_results"]


@dataclass(frozen=True)
class CheckpointSet:
    """The checkpoints a refresh measures influence at (oldest first) and one plan per checkpoint."""

    checkpoints: tuple[str, ...]
    steps: tuple[int | None, ...]
    plans: tuple[Plan, ...]

    @property
    def newest(self) -> Plan:
        """The plan of the newest checkpoint (its completion records give token counts)."""
        return self.plans[-1]

    @property
    def averaged(self) -> bool:
        return len(self.checkpoints) > 1

    def describe(self) -> dict:
        """JSON-able record (checkpoints.json, report)."""
        return {"average": len(self.checkpoints),
                "checkpoints": [{"uri": u, "step": s, "root": p.root}
                                for u, s, p in zip(self.checkpoints, self.steps, self.plans)]}


def _sub_plan(plan: Plan, step: int | None, index: int, store: str) -> Plan:
    """A checkpoint's plan: its own run sub-root, features in that checkpoint's datastore folder."""
    name = f"ckpt-{step}" if step is not None else f"ckpt-{index}"
    return replace(plan, root=storage.join(plan.root, name), store=store)


def _chosen(cfg: RunConfig, model_uri: str) -> list[tuple[int | None, str]]:
    """``(step, uri)`` of the checkpoints to average, oldest first, ending at ``model_uri``."""
    n = cfg.model.average_checkpoints
    if cfg.model.checkpoints:  # pinned by the run (workflows/run/pins.py) or listed by hand
        uris = list(cfg.model.checkpoints)
        if uris[-1].rstrip("/") != model_uri.rstrip("/"):
            raise ConfigError(f"model.checkpoints ends with {uris[-1]}, but the run continues {model_uri}; the "
                              f"newest listed checkpoint must be the run's model")
        return [(parse_step(u), u) for u in uris]
    if not cfg.model.checkpoint_root:
        raise ConfigError(f"model.average_checkpoints={n} needs model.checkpoint_root or model.checkpoints")
    found = list_checkpoints(cfg.model.checkpoint_root, cfg.storage)
    uris = [u.rstrip("/") for _, u in found]
    if model_uri.rstrip("/") not in uris:
        raise ConfigError(f"checkpoint {model_uri} is not under model.checkpoint_root {cfg.model.checkpoint_root}")
    end = uris.index(model_uri.rstrip("/")) + 1
    chosen = found[max(0, end - n):end]
    if len(chosen) < n:
        raise ConfigError(f"model.average_checkpoints={n} but only {len(chosen)} checkpoint(s) up to {model_uri} "
                          f"under {cfg.model.checkpoint_root}")
    return list(chosen)


def plan_checkpoints(cfg: RunConfig, plan: Plan, model_uri: str) -> CheckpointSet:
    """Pick (first run) or re-read (resume) the checkpoints of this run.

    ``model_uri`` is the checkpoint the refresh resolved (the newest). With averaging, the checkpoints are
    ``model.checkpoints`` (a run pins them there from ``model.checkpoint_root``), else the N newest complete
    checkpoints under the root up to ``model_uri``; they are recorded in ``checkpoints.json``. Fewer than
    N is an error.
    """
    n = cfg.model.average_checkpoints
    if n <= 1:
        return CheckpointSet((model_uri,), (parse_step(model_uri),), (plan,))
    uri = storage.join(plan.root, CHECKPOINTS_FILE)
    chosen = _chosen(cfg, model_uri)
    if storage.exists(uri, cfg.storage):
        recorded = storage.read_json(uri, cfg.storage)
        pinned = [(c["step"], c["uri"]) for c in recorded["checkpoints"]]
        if pinned != chosen:
            raise InfluMixError(
                f"run {plan.run_id} pinned checkpoints {[u for _, u in pinned]} ({uri}) but now resolves "
                f"{[u for _, u in chosen]}: the checkpoint root moved on. Start a new run (run_id=...).")
    plans = tuple(_sub_plan(plan, step, i, featurizer_store(cfg, ckpt)) for i, (step, ckpt) in enumerate(chosen))
    cset = CheckpointSet(tuple(u for _, u in chosen), tuple(s for s, _ in chosen), plans)
    for sub in plans:
        check_or_record_plan(sub, cfg.storage)
    if not storage.exists(uri, cfg.storage):
        storage.write_json_atomic(uri, cset.describe(), cfg.storage)
    log.info("influence averaged over %d checkpoints: %s", len(chosen), [u for _, u in chosen])
    return cset


def featurize_all(cset: CheckpointSet, featurize: Callable[[Plan, str], dict]) -> dict:
    """Featurize every checkpoint of the set (``featurize(plan, model_uri)`` → featurizer.json, e.g.
    ``run_featurize``); returns the newest's record, with the others' under ``checkpoints``. The
    projector must be the same for every checkpoint (the averaged features live in one space)."""
    records = [featurize(p, u) for p, u in zip(cset.plans, cset.checkpoints)]
    newest = dict(records[-1])
    if cset.averaged:
        projectors = {r.get("featurizer", {}).get("fingerprint") for r in records}
        if len(projectors) > 1:
            raise InfluMixError(f"checkpoints {list(cset.checkpoints)} were featurized with different "
                                f"projectors {sorted(map(str, projectors))}; influence cannot be averaged")
        newest["checkpoints"] = [{"uri": u, "step": s, "model": r.get("model", "")}
                                 for u, s, r in zip(cset.checkpoints, cset.steps, records)]
    return newest


def average_results(cfg: RunConfig, results: list[InfluenceResult], checkpoints: list[str]) -> InfluenceResult:
    """One InfluenceResult from per-checkpoint ones (newest last): the mean group-influence matrix, with
    normalisation and combined scores recomputed on it. Bootstrap intervals are the newest checkpoint's
    (each checkpoint's aggregation ran its own); the per-checkpoint GI are kept in
    ``preconditioner['per_checkpoint']``."""
    if not results:
        raise ConfigError("average_results: no per-checkpoint influence results")
    newest = results[-1]
    weights = np.array([t.weight for t in cfg.targets], dtype=np.float64)
    gi = np.mean([r.gi for r in results], axis=0)
    gi_norm = normalize_per_target(gi, cfg.influence.normalize)
    pre = {**newest.preconditioner, "averaged_over": len(results), "bootstrap_from": checkpoints[-1],
           "per_checkpoint": [{"uri": u, "gi": r.gi.tolist()} for r, u in zip(results, checkpoints)]}
    return replace(newest, gi=gi, gi_normalized=gi_norm, scores=combine_targets(gi_norm, weights),
                   preconditioner=pre)
