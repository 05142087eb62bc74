"""Preflight: every cheap check of a run's inputs, on the driver, before Ray starts or any model runs.

A bad input should cost seconds, not a featurized corpus. Preflight reads shard schemas and the first
record batch of each shard (up to :data:`MAX_SHARDS` corpus shards, spread over the corpus, and every
target shard), the checkpoint's ``config.json``, tokenizer and ``optimizer.pt`` (mapped onto the
architecture built on the ``meta`` device, so no weights are loaded), and writes then deletes one
object under ``output_uri``. It checks:

* corpus and target shards have the text / id / domain columns, string texts, no nulls, safe domain
  names (the same readers as featurization, so the error names the shard and column);
* every domain listed in ``corpus.domains`` has rows, and no domain has rows whose texts are all
  empty (shorter than ``sampling.min_chars``) — decided exactly when every shard was read to its end
  (or the domain comes from the path), otherwise featurization's per-shard counts decide it later
  (:func:`workflows.stages.aggregate.domain_order`);
* every target set has usable text;
* the tokenizer fits the model (its ids index the embedding: ``len(tokenizer) <= vocab_size``);
* the optimizer state is usable per ``model.optimizer_state`` (and for ``featurize.adam_aware``);
* ``output_uri`` is writable.

Nothing is recorded under the run root before preflight passes, so a fixed input resumes cleanly.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow.compute as pc

from operators.errors import ConfigError, CorpusError, ModelError, StorageError
from operators.io import storage
from operators.io.corpus import CorpusSpec, ShardRef, discover_shards, domain_for_path, iter_shard_batches
from workflows.config import RunConfig

log = logging.getLogger(__name__)

#: Corpus shards read (their first record batch); more shards are sampled evenly.
MAX_SHARDS = 64
#: Rows read from each inspected shard.
SAMPLE_ROWS = 256
FRESH = "fresh AdamW"


def _spread(shards: list[ShardRef], n: int) -> list[ShardRef]:
    if len(shards) <= n:
        return list(shards)
    step = (len(shards) - 1) / (n - 1)
    return [shards[round(i * step)] for i in range(n)]


def _sample(ref: ShardRef, spec: CorpusSpec, cfg: RunConfig) -> tuple[dict[str, list[int]], bool]:
    """{domain: [rows, usable rows]} of the shard's first record batch, and whether that was all of it."""
    batches: Iterator = iter_shard_batches(ref, spec, cfg.storage, SAMPLE_ROWS)
    counts: dict[str, list[int]] = {}
    table = next(batches, None)
    if table is not None and table.num_rows:
        lengths = pc.utf8_length(table.column("text")).to_numpy(zero_copy_only=False)
        usable = lengths >= max(1, cfg.sampling.min_chars)
        for domain, ok in zip(table.column("domain").to_pylist(), usable.tolist()):
            entry = counts.setdefault(domain, [0, 0])
            entry[0] += 1
            entry[1] += int(ok)
    complete = table is None or next(batches, None) is None
    return counts, complete


def check_corpus(cfg: RunConfig) -> dict[str, Any]:
    """Columns, domain names, listed domains with rows, domains with usable text (see module docstring)."""
    spec = cfg.corpus.model_copy(update={"domains": None})  # see every domain, listed or not
    shards = discover_shards(spec, cfg.storage)
    inspected = _spread(shards, MAX_SHARDS)
    rows: dict[str, list[int]] = {}
    complete = len(inspected) == len(shards)
    for ref in inspected:
        counts, whole = _sample(ref, spec, cfg)
        complete &= whole
        for d, (n, ok) in counts.items():
            entry = rows.setdefault(d, [0, 0])
            entry[0] += n
            entry[1] += ok
    by_path = None
    if not cfg.corpus.domain_column:  # domains come from paths: known exactly for every shard
        by_path = {domain_for_path(s.uri, cfg.corpus.domain_from_path) for s in shards}
    wanted = list(cfg.corpus.domains) if cfg.corpus.domains else sorted(rows)
    known = by_path if by_path is not None else (set(rows) if complete else None)
    notes: list[str] = []
    if cfg.corpus.domains and known is not None:
        missing = [d for d in cfg.corpus.domains if d not in known]
        if missing:
            where = f"shards of corpus.paths {list(cfg.corpus.paths)}"
            raise CorpusError(f"corpus.domains lists {missing} but no {where} has rows of them "
                              f"(domains with rows: {sorted(known)})")
    elif cfg.corpus.domains:
        unseen = [d for d in cfg.corpus.domains if d not in rows]
        if unseen:
            notes.append(f"corpus.domains {unseen} not seen in the first {SAMPLE_ROWS} rows of "
                         f"{len(inspected)} shard(s); featurization counts decide")
    if complete:
        empty = [d for d in wanted if d in rows and rows[d][1] == 0]
        if empty:
            raise CorpusError(f"corpus domain(s) {empty} have rows but no text of at least "
                              f"sampling.min_chars={max(1, cfg.sampling.min_chars)} characters in column "
                              f"{cfg.corpus.text_column!r}; fix the data or drop them from corpus.domains")
    return {"shards": len(shards), "inspected": len(inspected), "exact": complete,
            "sampled_rows": {d: rows[d][0] for d in sorted(rows)},
            "usable_rows": {d: rows[d][1] for d in sorted(rows)}, "notes": notes}


def check_targets(cfg: RunConfig) -> dict[str, Any]:
    """Every target set: readable shards with its text (and id) column and some usable text."""
    out: dict[str, Any] = {}
    for target in cfg.targets:
        spec = target.as_corpus()
        usable = rows = 0
        complete = True
        for ref in discover_shards(spec, cfg.storage):
            counts, whole = _sample(ref, spec, cfg)
            complete &= whole
            rows += sum(n for n, _ in counts.values())
            usable += sum(ok for _, ok in counts.values())
        if complete and usable == 0:
            raise CorpusError(f"target set {target.name!r} ({list(target.paths)}) has {rows} rows but no text of "
                              f"at least sampling.min_chars={max(1, cfg.sampling.min_chars)} characters in column "
                              f"{target.text_column!r}")
        out[target.name] = {"sampled_rows": rows, "usable_rows": usable}
    return out


def _optimizer_needed(cfg: RunConfig) -> bool:
    return cfg.mixture.validation.enabled or cfg.mates.enabled or cfg.mixture.solver == "tikmix_m" \
        or "tikmix_m" in cfg.mixture.compare


def probe_hyperparameter_source(cfg: RunConfig, fmt: str | None) -> str:
    """Where probes take lr/betas/eps/weight decay from, given the checkpoint optimizer's format."""
    from operators.model.optimizer_state import SOURCE_CHECKPOINT, SOURCE_CONFIG

    mode = cfg.mixture.validation.probe.hyperparameters
    if fmt is None or mode == "config":
        return SOURCE_CONFIG
    return SOURCE_CHECKPOINT if mode == "checkpoint" or fmt == "torch" else SOURCE_CONFIG


def check_optimizer(cfg: RunConfig, local_dir: str, uri: str) -> dict[str, Any]:
    """The optimizer state probes will continue, checked per ``model.optimizer_state``."""
    from operators.model.optimizer_state import OptimizerStateError, meta_model, read_optimizer_state

    mode = cfg.model.optimizer_state
    required = mode == "require" or cfg.featurize.adam_aware
    if mode == "ignore" and not cfg.featurize.adam_aware:
        return {"moments": FRESH, "reason": "model.optimizer_state=ignore",
                "hyperparameters": probe_hyperparameter_source(cfg, None)}
    try:
        opt = read_optimizer_state(local_dir, meta_model(local_dir))
    except OptimizerStateError as exc:
        if required:
            why = "featurize.adam_aware=true" if cfg.featurize.adam_aware else "model.optimizer_state=require"
            raise ModelError(f"{exc} ({why})") from exc
        log.warning("%s; probes will start from a fresh AdamW state (model.optimizer_state=require makes this "
                    "an error)", exc)
        return {"moments": FRESH, "reason": str(exc), "hyperparameters": probe_hyperparameter_source(cfg, None)}
    if opt is None:
        if required:
            why = "featurize.adam_aware=true" if cfg.featurize.adam_aware else "model.optimizer_state=require"
            raise ModelError(f"{why} but checkpoint {uri} has no optimizer.pt")
        return {"moments": FRESH, "reason": f"{uri} has no optimizer.pt",
                "hyperparameters": probe_hyperparameter_source(cfg, None)}
    from operators.model.optimizer_state import SOURCE_CHECKPOINT

    return {"moments": SOURCE_CHECKPOINT, "hyperparameters": probe_hyperparameter_source(cfg, opt.format),
            **opt.describe()}


def check_model(cfg: RunConfig, model_uri: str) -> dict[str, Any]:
    """The checkpoint directory, its tokenizer against its embedding size, and its optimizer state."""
    from operators.model.loading import checkpoint_dir, check_checkpoint_dir, load_tokenizer

    local = checkpoint_dir(model_uri, cfg.storage, cfg.model.cache_dir)
    config = check_checkpoint_dir(local, model_uri)
    tokenizer = load_tokenizer(str(local))
    vocab = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    size = len(tokenizer)
    if isinstance(vocab, int) and size > vocab:
        raise ModelError(f"checkpoint {model_uri}: the tokenizer has {size} tokens but config.json vocab_size is "
                         f"{vocab}; token ids >= {vocab} have no embedding (model and tokenizer do not match)")
    info: dict[str, Any] = {"uri": model_uri, "vocab_size": vocab, "tokenizer_size": size,
                            "model_type": config.get("model_type")}
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int) and cfg.featurize.max_length > positions:
        info["note"] = (f"featurize.max_length={cfg.featurize.max_length} exceeds the model's "
                        f"max_position_embeddings={positions}")
        log.warning("checkpoint %s: %s", model_uri, info["note"])
    if _optimizer_needed(cfg) or cfg.featurize.adam_aware:
        info["optimizer"] = check_optimizer(cfg, str(local), model_uri)
    return info


def check_other_checkpoints(cfg: RunConfig, model_uri: str) -> list[str]:
    """The older checkpoints of an averaged run exist and hold config.json (+ weights when local)."""
    from operators.model.checkpoints import parse_step
    from operators.model.loading import check_checkpoint_dir

    others = [u for u in cfg.model.checkpoints if u.rstrip("/") != model_uri.rstrip("/")]
    for uri in others:
        local = storage.local_path(uri, cfg.storage)
        if local is not None:
            from pathlib import Path

            check_checkpoint_dir(Path(local), uri)
        elif not storage.exists(storage.join(uri, "config.json"), cfg.storage):
            raise ModelError(f"model.checkpoints: {uri} has no config.json")
        if cfg.featurize.adam_aware and local is not None:
            check_optimizer(cfg, local, uri)
    return [f"{u} (step {parse_step(u)})" for u in others]


def check_output_writable(cfg: RunConfig) -> None:
    """Write and delete one small object under ``output_uri``."""
    probe = storage.join(cfg.output_uri, f".influmix-preflight-{uuid.uuid4().hex}")
    try:
        storage.write_bytes_atomic(probe, b"preflight\n", cfg.storage)
        storage.delete(probe, cfg.storage)
    except StorageError as exc:
        raise StorageError(f"output_uri {cfg.output_uri} is not writable: {exc}") from exc
    except OSError as exc:
        raise StorageError(f"output_uri {cfg.output_uri} is not writable: {exc}") from exc


def run_preflight(cfg: RunConfig, model_uri: str | Callable[[], str]) -> dict[str, Any]:
    """Run every check (see the module docstring); raises the first failure, returns the report section.
    ``model_uri`` may be a function resolving it (e.g. building the embedded default), called only after
    the data checks passed."""
    t0 = time.monotonic()
    if not cfg.targets:
        raise ConfigError("no target sets configured (targets)")
    check_output_writable(cfg)
    report: dict[str, Any] = {"corpus": check_corpus(cfg), "targets": check_targets(cfg)}
    model_uri = model_uri() if callable(model_uri) else model_uri
    report["model"] = check_model(cfg, model_uri)
    if cfg.model.checkpoints:
        report["other_checkpoints"] = check_other_checkpoints(cfg, model_uri)
    report["wall_s"] = round(time.monotonic() - t0, 3)
    log.info("preflight passed in %.1fs: %d corpus shards (%d read), %d target sets, model %s", report["wall_s"],
             report["corpus"]["shards"], report["corpus"]["inspected"], len(report["targets"]), model_uri)
    return report
