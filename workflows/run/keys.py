"""Keys of the feature datastore and of analysis runs (docs/ARCHITECTURE.md, "Feature datastore").

* **featurizer key**: everything that makes a checkpoint's features, whatever the input: the
  checkpoint's identity (its files' names, sizes and versions; the spec for the builtin model), dtype,
  the featurize settings (projector, layers, tokenizer length), sampling and whether K-FAC sums are
  collected. Features live under ``<output>/datastore/<featurizer key>/``.
* **shard key**: one input shard as featurization reads it: its canonical URI, size and version (ETag /
  version id on object stores, mtime locally) plus how it is read (columns, domain rules, or the target's
  name, split and cap). A shard's features live under ``.../shards/<shard key>/``, so a new shard or one
  whose bytes changed is featurized alone, and shards reused by any run are never redone.
* **analysis key**: the featurizer key, every shard key and the analysis settings (influence, mixture,
  validation, MATES, targets). The derived run id is ``<name>-<analysis key[:12]>``; changing an analysis
  setting makes a new run that reuses every feature.

No key contains the output location or the current directory: local paths are absolute and canonical,
and the output root is where the datastore lives, not part of what it stores.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from operators.errors import ModelError
from operators.io import storage

if TYPE_CHECKING:
    from workflows.config import RunConfig
    from workflows.run.plan import ShardTask

#: Bump when the on-disk feature format changes: every featurizer key changes with it.
DATASTORE_FORMAT = 1
DATASTORE_DIR = "datastore"
BUILTIN_SCHEME = "builtin://"  # workflows.config.BUILTIN_MODEL (not imported: config imports the plan)
#: Run-config fields that never change a result (where, how fast, how loud) and stay out of the keys.
_NOT_ANALYSIS = {"run_id", "log_format", "cluster", "output_uri", "storage"}


def digest(obj: Any, length: int = 16) -> str:
    """Short sha256 of a JSON-able object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def newest_model_uri(cfg: RunConfig) -> str | None:
    """The checkpoint a run of ``cfg`` featurizes: the pinned path, or the newest under checkpoint_root
    (None for the builtin model)."""
    if cfg.model.checkpoint_root:
        from operators.model.checkpoints import find_latest_checkpoint

        return find_latest_checkpoint(cfg.model.checkpoint_root, cfg.storage)
    return None if cfg.model.path.startswith(BUILTIN_SCHEME) else cfg.model.path


def checkpoint_identity(cfg: RunConfig, model_uri: str | None = None) -> dict:
    """What names a checkpoint's weights and tokenizer: its canonical location with every file's
    relative name, size and version; for the builtin model the hash of its build spec."""
    uri = model_uri or newest_model_uri(cfg)
    if uri is None:
        from workflows.assets import checkpoint_key

        return {"builtin": checkpoint_key(cfg.model.tiny)}
    canonical = storage.storage_for(uri, cfg.storage).canonical(uri)
    files = storage.list_file_versions(canonical, None, cfg.storage)
    if not files:
        raise ModelError(f"model checkpoint {canonical}: no files found (model.path / checkpoint_root)")
    prefix = canonical.rstrip("/") + "/"
    return {"uri": canonical, "files": [[u.removeprefix(prefix), size, version] for u, size, version in files]}


def featurizer_key(cfg: RunConfig, model_uri: str | None = None) -> str:
    """Key of the features one checkpoint makes (see the module docstring)."""
    return digest({"format": DATASTORE_FORMAT, "checkpoint": checkpoint_identity(cfg, model_uri),
                   "dtype": cfg.model.dtype, "featurize": cfg.featurize.model_dump(mode="json"),
                   "sampling": cfg.sampling.model_dump(mode="json"),
                   "kfac": cfg.influence.preconditioner == "kfac"})


def featurizer_store(cfg: RunConfig, model_uri: str | None = None) -> str:
    """``<output>/datastore/<featurizer key>``: the features of one checkpoint."""
    return storage.join(cfg.output_uri, DATASTORE_DIR, featurizer_key(cfg, model_uri))


def read_settings(cfg: RunConfig, role: str, target_name: str | None) -> dict:
    """How featurization reads a shard of this role (everything but the shard's own location)."""
    if role == "corpus":
        return {"corpus": cfg.corpus.model_dump(mode="json", exclude={"paths"})}
    target = next(t for t in cfg.targets if t.name == target_name)
    return {"target": target.model_dump(mode="json", exclude={"paths", "weight"}),
            "split": cfg.targets_split.model_dump(mode="json")}


def shard_key(task: ShardTask, settings: dict) -> str:
    """Key of one shard's features within a featurizer key (identity + how it is read)."""
    return digest({"uri": task.uri, "format": task.format, "size": task.size_bytes, "version": task.version,
                   "role": task.role, "read": settings})


def analysis_key(cfg: RunConfig, store: str, tasks: tuple[ShardTask, ...]) -> str:
    """Key of an analysis run: its features (featurizer store + shard keys) and analysis settings."""
    settings = cfg.model_dump(mode="json", exclude=_NOT_ANALYSIS)
    settings["model"].pop("cache_dir", None)
    return digest({"features": store.rstrip("/").rsplit("/", 1)[-1], "shards": sorted(t.key or "" for t in tasks),
                   "settings": settings})
