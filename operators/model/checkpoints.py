"""Training checkpoints under a ``checkpoint_root``: parse their steps, list them, write new ones.

:func:`parse_step` is the one reader of step numbers in directory names. What
:func:`save_step_checkpoint` writes is exactly what the refresh reads back: :func:`find_latest_checkpoint`
picks the highest step holding a ``config.json``; :func:`operators.model.loading.load_causal_lm` loads
weights + tokenizer; and :func:`operators.model.loading.checkpoint_adam_state` reads ``optimizer.pt``
(Adam moments keyed by parameter name, the format of :func:`operators.model.tiny_lm.adam_moments_by_name`).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from operators.io import storage as st
from operators.errors import ConfigError, ModelError, StorageError
from operators.io.storage import StorageSpec
from operators.io.storage.local import make_public_dir
from operators.model.tiny_lm import save_checkpoint

__all__ = ["parse_step", "checkpoint_dir_name", "list_dir", "list_checkpoints", "find_latest_checkpoint",
           "last_checkpoints", "save_step_checkpoint", "optimizer_from_state"]

# checkpoint-N (HF Trainer), global_stepN (DeepSpeed), step_N / step-N, iter_NNNNNNN (Megatron), ckpt-N
_STEP_DIR = re.compile(r"(?:checkpoint|step|global_step|iter|ckpt)[-_]?([0-9]+)")
_LAYOUTS = "checkpoint-<n>, global_step<n>, step_<n> or iter_<n>"


def parse_step(name: str) -> int | None:
    """The training step in a checkpoint directory's name, or None if it names no step.

    ``name`` may be a path or URI (its last component counts; trailing slashes are ignored). Layouts:
    ``checkpoint-N`` (Hugging Face Trainer), ``global_stepN`` (DeepSpeed), ``step_N`` / ``step-N``,
    ``iter_NNNNNNN`` (Megatron) and ``ckpt-N``; the separator may also be ``_``, ``-`` or absent.
    Anything else in the name (``checkpoint-best``, ``step_1_backup``, ``checkpoint-5.tmp``) gives None.
    """
    match = _STEP_DIR.fullmatch(name.rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


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
    local = st.local_path(root_s)
    if local is None:
        raise ConfigError(f"save_step_checkpoint writes local checkpoint roots only, got {root_s}")
    base = Path(local).resolve()
    final = base / checkpoint_dir_name(step)
    if final.exists():
        raise ModelError(f"checkpoint {final} already exists; checkpoints are immutable")
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=base, prefix=f".{final.name}.tmp-"))
    make_public_dir(tmp)
    try:
        save_checkpoint(tmp, model, tokenizer, optimizer, {**(meta or {}), "step": int(step)})
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


def list_dir(uri: str, storage: StorageSpec | None, what: str) -> tuple[Any, list[dict[str, Any]]]:
    """``(filesystem, entries)`` directly under ``uri`` (fsspec ``ls`` details); ModelError naming
    ``what`` if it does not exist, StorageError if listing fails."""
    fs, path = st.filesystem_for(uri, storage)
    try:
        return fs, list(fs.ls(path, detail=True))
    except FileNotFoundError as exc:
        raise ModelError(f"{what} {uri} does not exist") from exc
    except OSError as exc:
        raise StorageError(f"listing {uri} failed: {exc}") from exc


def list_checkpoints(root_uri: str, storage: StorageSpec | None = None) -> list[tuple[int, str]]:
    """``(step, uri)`` of every complete checkpoint under ``root_uri`` (local or s3://), oldest first:
    subdirectories whose name :func:`parse_step` reads and that hold a ``config.json``."""
    fs, entries = list_dir(root_uri, storage, "checkpoint root")
    found: dict[int, str] = {}
    for info in entries:
        name = info["name"].rstrip("/").rsplit("/", 1)[-1]
        step = parse_step(name)
        if info.get("type") != "directory" or step is None:
            continue
        try:
            complete = fs.exists(f"{info['name'].rstrip('/')}/config.json")
        except OSError as exc:
            raise StorageError(f"checking {root_uri}/{name}/config.json failed: {exc}") from exc
        if complete and (step not in found or name < found[step].rsplit("/", 1)[-1]):
            found[step] = st.join(root_uri, name)
    return sorted(found.items())


def last_checkpoints(root_uri: str, n: int, storage: StorageSpec | None = None) -> list[str]:
    """The newest ``n`` checkpoints under ``root_uri``, oldest first (fewer if fewer exist, >= 1)."""
    if n < 1:
        raise ConfigError(f"need n >= 1 checkpoints, got {n}")
    found = list_checkpoints(root_uri, storage)
    if not found:
        raise ModelError(f"no checkpoint under {root_uri}: expected subdirectories like {_LAYOUTS} "
                         f"containing config.json")
    return [uri for _, uri in found[-n:]]


def find_latest_checkpoint(root_uri: str, storage: StorageSpec | None = None) -> str:
    """The checkpoint under ``root_uri`` with the highest step."""
    return last_checkpoints(root_uri, 1, storage)[0]


def optimizer_from_state(model: torch.nn.Module, state: dict | None, lr: float = 1e-3) -> torch.optim.AdamW:
    """An AdamW over ``model``'s trainable parameters holding ``state`` (a torch ``state_dict``, e.g.
    :func:`operators.model.loading.checkpoint_adam_state`), so it can be saved again with its moments."""
    from operators.model.optimizer_state import grouped_params, plain_state_dict

    opt = torch.optim.AdamW(grouped_params([p for p in model.parameters() if p.requires_grad], state), lr=lr)
    if state is not None:
        opt.load_state_dict(plain_state_dict(state))
    return opt
