"""Scheduled mixture refresh: latest checkpoint + previous manifest → new manifest + `latest` pointer.

Run ids are date-stamped (`<name>-<stamp>-step<N>-<hash>`), so a double trigger of the same schedule
resumes or returns the finished run instead of computing it twice.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from operators.model.checkpoints import parse_step
from operators.errors import ConfigError
from operators.io.names import SAFE_NAME_HELP, is_safe_name
from workflows.config import RunConfig
from workflows.mixture_refresh import RefreshResult, resolve_model_uri, run_mixture_refresh
from workflows.run.pins import resolve_checkpoints, with_checkpoint
from workflows.run.plan import run_keys

log = logging.getLogger(__name__)


def default_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d")


def refresh_config(cfg: RunConfig, stamp: str) -> RunConfig:
    """Pin the checkpoint(s) picked now (the newest ``model.average_checkpoints`` when averaging) and derive
    the stamped run id."""
    checkpoints = resolve_checkpoints(cfg)
    pinned = with_checkpoint(cfg, checkpoints) if checkpoints else cfg
    model_uri = resolve_model_uri(pinned)
    step = parse_step(model_uri)
    pinned = pinned.model_copy(update={"model": pinned.model.model_copy(update={"path": model_uri})})
    if cfg.run_id:
        return pinned
    tag = f"-step{step}" if step is not None else ""
    run_id = f"{cfg.name}-{stamp}{tag}-{run_keys(pinned).analysis[:8]}"  # inputs + settings, not the cwd
    if not is_safe_name(run_id):
        raise ConfigError(f"--stamp {stamp!r} gives the run id {run_id!r}, which is not a safe name: "
                          f"{SAFE_NAME_HELP}")
    return pinned.model_copy(update={"run_id": run_id})


def run_scheduled_refresh(cfg: RunConfig, stamp: str | None = None) -> RefreshResult:
    pinned = refresh_config(cfg, stamp or default_stamp())
    log.info("scheduled refresh %s with checkpoint %s", pinned.run_id, pinned.model.path)
    return run_mixture_refresh(pinned)
