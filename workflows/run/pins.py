"""Pin every input that is resolved at run time, once, when a run first starts.

A run's result must depend only on its plan. Two inputs are looked up at run time: the checkpoint
(`model.checkpoint_root` → newest `checkpoint-<step>`, or the newest `model.average_checkpoints` of
them) and the previous manifest (the mixture's
`latest` pointer, used as the KL reference). Both are resolved when the run first starts and recorded
in its plan.json (`pins`); a resumed or repeated run reads them back instead of looking again, so a
manifest published meanwhile (by a concurrent or later run) never becomes its reference. The pinned
checkpoint also replaces `checkpoint_root` in the config (`model.path`, and `model.checkpoints` when
influence is averaged over several), so it is part of the derived run id.
"""

from __future__ import annotations

from operators.errors import ConfigError, ModelError
from operators.io import storage
from workflows.config import RunConfig
from workflows.stages.problem import latest_pointer_uri
from workflows.run.plan import read_recorded_plan, run_root


def resolve_checkpoints(cfg: RunConfig) -> list[str] | None:
    """The checkpoints of the run, oldest first (the last is the one probes continue): `model.checkpoints`,
    else the newest `model.average_checkpoints` under `model.checkpoint_root`; None without either.
    Fewer checkpoints under the root than asked for is an error, not a silent single-checkpoint run."""
    n = cfg.model.average_checkpoints
    if cfg.model.checkpoints:
        return list(cfg.model.checkpoints)
    if not cfg.model.checkpoint_root:
        if n > 1:
            raise ConfigError(f"model.average_checkpoints={n} needs model.checkpoint_root (the newest {n} "
                              f"checkpoints under it are averaged) or a list in model.checkpoints")
        return None
    from operators.model.checkpoints import last_checkpoints, list_checkpoints

    chosen = last_checkpoints(cfg.model.checkpoint_root, n, cfg.storage)
    if len(chosen) < n:
        steps = [s for s, _ in list_checkpoints(cfg.model.checkpoint_root, cfg.storage)]
        raise ModelError(f"model.average_checkpoints={n} but model.checkpoint_root {cfg.model.checkpoint_root} "
                         f"holds only {len(chosen)} complete checkpoint(s) (steps {steps}); lower "
                         f"model.average_checkpoints or wait for more checkpoints")
    return chosen


def resolve_checkpoint(cfg: RunConfig) -> str | None:
    """The checkpoint the run continues (the newest of :func:`resolve_checkpoints`), or None."""
    found = resolve_checkpoints(cfg)
    return found[-1] if found else None


def resolve_previous(cfg: RunConfig) -> str | None:
    """`mixture.previous_manifest`, else the manifest the `latest` pointer names now (None if none)."""
    if cfg.mixture.previous_manifest is not None:
        return cfg.mixture.previous_manifest
    found = storage.read_versioned(latest_pointer_uri(cfg), cfg.storage)
    if found is None:
        return None
    from workflows.stages.publish import parse_pointer

    return parse_pointer(found[0], latest_pointer_uri(cfg))["manifest_uri"]


def with_checkpoint(cfg: RunConfig, checkpoint: str | list[str] | None) -> RunConfig:
    """``cfg`` with the resolved checkpoint(s) in `model.path` (newest) and `model.checkpoints` (all, when
    more than one) instead of `model.checkpoint_root`."""
    if checkpoint is None:
        return cfg
    found = [checkpoint] if isinstance(checkpoint, str) else list(checkpoint)
    update = {"path": found[-1], "checkpoint_root": None, "checkpoints": found if len(found) > 1 else [],
              "average_checkpoints": max(1, len(found)) if len(found) > 1 else cfg.model.average_checkpoints}
    model = cfg.model.model_copy(update=update)
    return cfg.model_copy(update={"model": model})


def _recorded(cfg: RunConfig) -> dict | None:
    plan = read_recorded_plan(run_root(cfg), cfg.storage)
    return plan.get("pins") if plan and "pins" in plan else None


def pin_run(cfg: RunConfig) -> tuple[RunConfig, dict]:
    """`(config with the checkpoint(s) pinned, pins)`; pins recorded by an earlier start of this run win.
    `pins["checkpoints"]` is present only when influence is averaged over several checkpoints."""
    recorded = _recorded(cfg) if cfg.run_id else None
    if recorded:
        checkpoints = recorded.get("checkpoints") or ([recorded["checkpoint"]] if recorded["checkpoint"] else None)
    else:
        checkpoints = resolve_checkpoints(cfg)
    pinned = with_checkpoint(cfg, checkpoints)
    if recorded is None:
        recorded = _recorded(pinned)
    previous = recorded["previous_manifest"] if recorded else resolve_previous(pinned)
    pins = {"checkpoint": checkpoints[-1] if checkpoints else None, "previous_manifest": previous}
    if checkpoints and len(checkpoints) > 1:
        pins["checkpoints"] = list(checkpoints)
    return pinned, pins
