"""Load causal-LM checkpoints from local paths or s3:// (staged to a local cache), never from the hub."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from operators.io import storage as st
from operators.errors import ConfigError, ModelError, StorageError
from operators.io.storage import StorageSpec
from operators.io.storage.local import make_public_dir
from operators.model.checkpoints import list_dir, parse_step
from operators.model.optimizer_state import (
    CheckpointOptimizer,
    OptimizerStateError,
    OptimizerStateMode,
    read_optimizer_state,
)
from operators.model.quiet import hf_quiet
from operators.model.tiny_lm import META_FILE, OPTIMIZER_FILE
from operators.model.tokenize import prepare_tokenizer

log = logging.getLogger(__name__)
WEIGHT_SUFFIXES = (".safetensors", ".bin")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
           "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


@dataclass
class LoadedModel:
    """A loaded checkpoint: eval-mode model, tokenizer (with a pad token) and provenance."""

    model: PreTrainedModel
    tokenizer: Any
    meta: dict[str, Any]
    local_dir: str
    fingerprint: str
    step: int
    uri: str = ""
    config: dict[str, Any] = field(default_factory=dict)


def default_cache_dir() -> str:
    """``$INFLUMIX_CACHE_DIR`` or ``~/.cache/influmix``."""
    return os.environ.get("INFLUMIX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "influmix")


def _weight_files(local_dir: Path) -> list[Path]:
    files = sorted(p for p in local_dir.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)
                   and (p.name.startswith("model") or p.name.startswith("pytorch_model")))
    return files


def checkpoint_fingerprint(local_dir: str | os.PathLike[str]) -> str:
    """sha256 over ``config.json`` and every weights file (sorted by name), names included."""
    root = Path(local_dir)
    h = hashlib.sha256()
    for path in [root / "config.json", *_weight_files(root)]:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _check_dir(local_dir: Path, uri: str) -> dict[str, Any]:
    """Validate a checkpoint directory; return its parsed config.json."""
    if not local_dir.is_dir():
        raise ModelError(f"model checkpoint directory {uri} does not exist")
    cfg_path = local_dir / "config.json"
    if not cfg_path.is_file():
        raise ModelError(f"model checkpoint {uri} has no config.json (looked for {cfg_path})")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"model config {cfg_path} is not valid JSON: {exc}") from exc
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelError(f"model config {cfg_path}: model_type={model_type!r} is not a causal LM "
                         f"(no AutoModelForCausalLM class for it)")
    if not _weight_files(local_dir):
        raise ModelError(f"model checkpoint {uri} has no weights file "
                         f"(model*.safetensors or pytorch_model*.bin)")
    return config


def _ensure_pad(tokenizer: Any, uri: str) -> Any:
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.bos_token or tokenizer.unk_token
        if fallback is None:
            raise ModelError(f"tokenizer in {uri} has no pad, eos, bos or unk token to pad with")
        tokenizer.pad_token = fallback
    return tokenizer


def _step_of(local_dir: Path, meta: dict[str, Any]) -> int:
    if isinstance(meta.get("step"), int):
        return int(meta["step"])
    state = local_dir / "trainer_state.json"
    if state.is_file():
        try:
            return int(json.loads(state.read_text()).get("global_step", 0))
        except (OSError, ValueError, TypeError):
            pass
    step = parse_step(local_dir.name)
    return 0 if step is None else step


def load_causal_lm(
    uri: str,
    device: str = "cpu",
    dtype: str = "float32",
    storage: StorageSpec | None = None,
    cache_dir: str | None = None,
) -> LoadedModel:
    """Load a causal LM + tokenizer from a local dir or an s3:// prefix (local files only)."""
    if dtype not in _DTYPES:
        raise ConfigError(f"model dtype={dtype!r} is not one of {sorted(_DTYPES)}")
    local = _local_dir(uri, storage, cache_dir)
    config = _check_dir(local, uri)
    kwargs: dict[str, Any] = {"local_files_only": True}
    kwargs["dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"] = _DTYPES[dtype]
    try:
        with hf_quiet():
            model, info = AutoModelForCausalLM.from_pretrained(str(local), output_loading_info=True, **kwargs)
    except Exception as exc:  # transformers raises OSError/ValueError/RuntimeError/safetensors errors
        raise ModelError(f"could not load model weights from {uri}: {type(exc).__name__}: {exc}") from exc
    missing = [k for k in info.get("missing_keys", []) if k]
    if missing:
        raise ModelError(f"model weights in {uri} lack {len(missing)} parameters, e.g. {missing[:3]}")
    tokenizer = _load_tokenizer_dir(local, uri)
    meta: dict[str, Any] = {}
    if (local / META_FILE).is_file():
        try:
            meta = json.loads((local / META_FILE).read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ModelError(f"{local / META_FILE} is not valid JSON: {exc}") from exc
    model.to(device).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, meta=meta, local_dir=str(local),
                       fingerprint=checkpoint_fingerprint(local), step=_step_of(local, meta), uri=uri,
                       config=config)


def _local_dir(uri: str, storage: StorageSpec | None, cache_dir: str | None) -> Path:
    local = st.local_path(uri, storage)
    if local is None:
        return Path(stage_checkpoint(uri, storage, cache_dir))
    return Path(local).resolve()


def _load_tokenizer_dir(local: Path, uri: str) -> Any:
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(local), local_files_only=True)
    except Exception as exc:
        raise ModelError(f"could not load the tokenizer from {uri}: {type(exc).__name__}: {exc}") from exc
    return _ensure_pad(tokenizer, uri)


def checkpoint_dir(uri: str, storage: StorageSpec | None = None, cache_dir: str | None = None) -> Path:
    """The local directory of a checkpoint (an s3:// checkpoint is staged into the cache first)."""
    return _local_dir(uri, storage, cache_dir)


def check_checkpoint_dir(local_dir: Path, uri: str) -> dict[str, Any]:
    """ModelError unless ``local_dir`` holds a causal-LM config.json and weights; returns the config."""
    return _check_dir(local_dir, uri)


def load_tokenizer(uri: str, storage: StorageSpec | None = None, cache_dir: str | None = None) -> Any:
    """Only the tokenizer of a checkpoint (local dir or s3://, staged like :func:`load_causal_lm`)."""
    local = _local_dir(uri, storage, cache_dir)
    if not local.is_dir():
        raise ModelError(f"model checkpoint directory {uri} does not exist")
    return _load_tokenizer_dir(local, uri)


def load_adam_moments(local_dir: str | os.PathLike[str], model: torch.nn.Module | None = None) -> dict[str, Any] | None:
    """``optimizer.pt`` as {param_name: {exp_avg, exp_avg_sq}, betas, eps, step, lr}; None if absent.

    An influmix-layout file is read as it is; a torch ``optimizer.state_dict()`` (HF Trainer) needs
    ``model`` (real or :func:`operators.model.optimizer_state.meta_model`) to name its moments."""
    path = Path(local_dir) / OPTIMIZER_FILE
    if not path.is_file():
        return None
    if model is not None:
        opt = read_optimizer_state(local_dir, model)
        if opt is None:
            return None
        group = opt.groups[0]
        out: dict[str, Any] = {name: {"exp_avg": a, "exp_avg_sq": b} for name, (a, b) in opt.moments.items()}
        out.update({"betas": tuple(group["betas"]), "eps": float(group["eps"]), "step": opt.step,
                    "lr": float(group["lr"]), "weight_decay": float(group["weight_decay"])})
        return out
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise OptimizerStateError(f"could not read Adam moments from {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict) or not {"betas", "eps", "step"} <= set(state):
        raise OptimizerStateError(f"{path} is not an influmix optimizer state (no betas/eps/step); a torch "
                                  f"optimizer state_dict needs the model to map its parameter indices")
    return state


# ------------------------------------------------------------------------- remote checkpoints


def stage_checkpoint(uri: str, storage: StorageSpec | None = None, cache_dir: str | None = None) -> str:
    """Download the files directly under ``uri`` into a cache dir keyed by URI + ETags/sizes.

    Concurrent callers are safe: each downloads into a private temp dir that is renamed into place;
    the first rename wins and later callers reuse the finished directory.
    """
    fs, entries = list_dir(uri, storage, "model checkpoint directory")
    files = {}
    for info in entries:
        name = info["name"].rstrip("/").rsplit("/", 1)[-1]
        if info.get("type") == "file" and not name.startswith("."):
            tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
            files[name] = (info["name"], int(info.get("size") or 0), str(tag))
    if not files:
        raise ModelError(f"model checkpoint directory {uri} does not exist or holds no files")
    if "config.json" not in files:
        raise ModelError(f"model checkpoint {uri} has no config.json")
    digest = hashlib.sha256(json.dumps([uri, sorted((k, v[1], v[2]) for k, v in files.items())]).encode())
    root = Path(cache_dir or default_cache_dir()) / "models"
    dest = root / f"{uri.rstrip('/').rsplit('/', 1)[-1][:40]}-{digest.hexdigest()[:20]}"
    if dest.is_dir():
        return str(dest)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{dest.name}.tmp-"))
    make_public_dir(tmp)
    try:
        for name, (remote, size, _) in sorted(files.items()):
            try:
                fs.get_file(remote, str(tmp / name))
            except OSError as exc:
                raise StorageError(f"downloading {uri}/{name} failed: {exc}") from exc
            if (tmp / name).stat().st_size != size:
                raise StorageError(f"downloading {uri}/{name}: got {(tmp / name).stat().st_size} bytes, "
                                   f"expected {size}")
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(dest)


def checkpoint_optimizer(loaded: LoadedModel, mode: OptimizerStateMode = "auto") -> CheckpointOptimizer | None:
    """The checkpoint's optimizer state per ``mode`` (``model.optimizer_state``): ``ignore`` → None;
    ``auto`` → None with a warning when it is missing or cannot be mapped; ``require`` → ModelError then."""
    if mode == "ignore":
        return None
    try:
        opt = read_optimizer_state(loaded.local_dir, loaded.model)
    except OptimizerStateError as exc:
        if mode == "require":
            raise
        log.warning("%s; probes start from a fresh AdamW state (model.optimizer_state=require makes this "
                    "an error)", exc)
        return None
    if opt is None:
        if mode == "require":
            raise ModelError(f"model.optimizer_state=require but {loaded.uri or loaded.local_dir} has no "
                             f"{OPTIMIZER_FILE}")
        log.warning("%s has no optimizer.pt: probes start from a fresh AdamW state", loaded.uri or loaded.local_dir)
    return opt


def checkpoint_adam_state(loaded: LoadedModel, mode: OptimizerStateMode = "auto") -> dict[str, Any] | None:
    """The checkpoint's AdamW state as a torch ``state_dict`` for probes that continue training (as MATES
    does), or None (probes then start from a fresh optimizer; see :func:`checkpoint_optimizer`). A torch
    (Trainer) state is marked so probes keep its lr/betas/eps/weight decay
    (``ProbeSpec.hyperparameters=auto``)."""
    opt = checkpoint_optimizer(loaded, mode)
    if opt is None:
        return None
    return opt.torch_state_dict(loaded.model, hyperparameters_from_checkpoint=opt.format == "torch")


@dataclass(frozen=True)
class ModelSource:
    """Everything a worker needs to load the checkpoint: no run config travels to Ray tasks."""

    uri: str
    storage: StorageSpec | None = None
    cache_dir: str | None = None
    dtype: str = "float32"
    optimizer_state: OptimizerStateMode = "auto"

    def load(self, device: str = "cpu", dtype: str | None = None) -> LoadedModel:
        return load_causal_lm(self.uri, device=device, dtype=dtype or self.dtype, storage=self.storage,
                              cache_dir=self.cache_dir)

    def tokenizer(self) -> Any:
        """The checkpoint's tokenizer, prepared for right-padded batches."""
        return prepare_tokenizer(load_tokenizer(self.uri, storage=self.storage, cache_dir=self.cache_dir))
