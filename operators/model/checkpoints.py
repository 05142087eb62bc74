"""Training checkpoints under a ``checkpoint_root``: write ``checkpoint-<step>`` dirs, list them by step.

What :func:`save_step_checkpoint` writes is exactly what the refresh reads back:
:func:`operators.model.loading.find_latest_checkpoint` picks the highest ``checkpoint-<step>`` holding a
``config.json``; :func:`operators.model.loading.load_causal_lm` loads weights + tokenizer; and
:func:`operators.model.loading.checkpoint_adam_state` reads ``optimizer.pt`` (Adam moments keyed by
parameter name, the format of :func:`operators.model.tiny_lm.adam_moments_by_name`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from operators.io import storage as st
from operators.errors import ConfigError, ModelError
from operators.model.loading import list_checkpoints
from operators.model.tiny_lm import save_checkpoint

__all__ = ["checkpoint_dir_name", "save_step_checkpoint", "list_checkpoints", "optimizer_from_state"]


def checkpoint_dir_name(step: int) -> str:
    """``checkpoint-<step>`` (the Hugging Face Trainer's layout)."""
    if step < 0:
        raise ConfigError(f"checkpoint step must be >= 0, got {step}")
    return f"checkpoint-{int(step)}"


def save_step_checkpoint(
    root: str | os.PathLike[str],
    step: int,
    model: PreTrainedModel,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer | None,
    meta: dict[str, Any] | None = None,
) -> str:
    """Write ``<root>/checkpoint-<step>/`` (config, safetensors, tokenizer, ``optimizer.pt``, meta).

    Local roots only. The directory is assembled under a hidden temp name and renamed into place, so
    :func:`find_latest_checkpoint` never sees a half-written checkpoint; an existing checkpoint of the
    same step is refused (checkpoints are immutable). Returns the checkpoint directory.
    """
    root_s = str(root)
    if st.is_remote(root_s):
        raise ConfigError(f"save_step_checkpoint writes local checkpoint roots only, got {root_s}")
    base = Path(root_s[len("file://"):] if root_s.startswith("file://") else root_s).expanduser().resolve()
    final = base / checkpoint_dir_name(step)
    if final.exists():
        raise ModelError(f"checkpoint {final} already exists; checkpoints are immutable")
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=base, prefix=f".{final.name}.tmp-"))
    try:
        save_checkpoint(tmp, model, tokenizer, optimizer, {**(meta or {}), "step": int(step)})
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


def optimizer_from_state(model: torch.nn.Module, state: dict | None, lr: float = 1e-3) -> torch.optim.AdamW:
    """An AdamW over ``model``'s trainable parameters holding ``state`` (a torch ``state_dict``, e.g.
    :func:`operators.model.loading.checkpoint_adam_state`), so it can be saved again with its moments."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    if state is not None:
        opt.load_state_dict(state)
    return opt
