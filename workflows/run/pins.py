"""Pin every input that is resolved at run time, once, when a run first starts.

A run's result must depend only on its plan. Two inputs are looked up at run time: the checkpoint
(`model.checkpoint_root` → newest `checkpoint-<step>`) and the previous manifest (the mixture's
`latest` pointer, used as the KL reference). Both are resolved when the run first starts and recorded
in its plan.json (`pins`); a resumed or repeated run reads them back instead of looking again, so a
manifest published meanwhile (by a concurrent or later run) never becomes its reference. The pinned
checkpoint also replaces `checkpoint_root` in the config, so it is part of the derived run id.
"""

from __future__ import annotations

from operators.io import storage
from workflows.config import RunConfig
from workflows.stages.problem import latest_pointer_uri
from workflows.run.plan import read_recorded_plan, run_root


def resolve_checkpoint(cfg: RunConfig) -> str | None:
    if not cfg.model.checkpoint_root:
        return None
    from operators.model.checkpoints import find_latest_checkpoint

    return find_latest_checkpoint(cfg.model.checkpoint_root, cfg.storage)


def resolve_previous(cfg: RunConfig) -> str | None:
    """`mixture.previous_manifest`, else the manifest the `latest` pointer names now (None if none)."""
    if cfg.mixture.previous_manifest is not None:
        return cfg.mixture.previous_manifest
    found = storage.read_versioned(latest_pointer_uri(cfg), cfg.storage)
    if found is None:
        return None
    from workflows.stages.publish import parse_pointer

    return parse_pointer(found[0], latest_pointer_uri(cfg))["manifest_uri"]


def with_checkpoint(cfg: RunConfig, checkpoint: str | None) -> RunConfig:
    if checkpoint is None:
        return cfg
    model = cfg.model.model_copy(update={"path": checkpoint, "checkpoint_root": None})
    return cfg.model_copy(update={"model": model})


def _recorded(cfg: RunConfig) -> dict | None:
    plan = read_recorded_plan(run_root(cfg), cfg.storage)
    return plan.get("pins") if plan and "pins" in plan else None


def pin_run(cfg: RunConfig) -> tuple[RunConfig, dict]:
    """`(config with the checkpoint pinned, pins)`; pins recorded by an earlier start of this run win."""
    recorded = _recorded(cfg) if cfg.run_id else None
    checkpoint = recorded["checkpoint"] if recorded else resolve_checkpoint(cfg)
    pinned = with_checkpoint(cfg, checkpoint)
    if recorded is None:
        recorded = _recorded(pinned)
    previous = recorded["previous_manifest"] if recorded else resolve_previous(pinned)
    return pinned, {"checkpoint": checkpoint, "previous_manifest": previous}
