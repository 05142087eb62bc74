"""Where examples come from: the rows of a shard as featurization sees them, and tokenized pools per
domain or target for probes, MATES and TiKMiX-M. Workers get an :class:`ExampleSource` (a few small
specs), never the run config."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from operators.errors import ConfigError
from operators.io.corpus import (
    BATCH_ROWS,
    SHARD_SCHEMA,
    CorpusSpec,
    DomainCap,
    SamplingSpec,
    ShardRef,
    TargetSpec,
    cap_per_domain,
    iter_shard_batches,
    sample_rows,
)
from operators.io.splits import SplitName, TargetSplitSpec, split_rows
from operators.io.storage import StorageSpec
from operators.model.tokenize import tokenize_texts
from workflows.run.plan import Plan, ShardTask, source_spec

if TYPE_CHECKING:
    from workflows.config import RunConfig


@dataclass(frozen=True)
class ExampleSource:
    """The corpus, the target sets, how they are sampled and split, and the model's context length."""

    corpus: CorpusSpec
    targets: tuple[TargetSpec, ...]
    sampling: SamplingSpec
    split: TargetSplitSpec
    storage: StorageSpec
    max_length: int

    @classmethod
    def of(cls, cfg: RunConfig) -> ExampleSource:
        return cls(cfg.corpus, tuple(cfg.targets), cfg.sampling, cfg.targets_split, cfg.storage,
                   cfg.featurize.max_length)

    def target(self, name: str) -> TargetSpec:
        return next(t for t in self.targets if t.name == name)


def iter_task_rows(src: ExampleSource, task: ShardTask, stats: dict[str, dict[str, int]] | None = None,
                   chunk_rows: int = BATCH_ROWS, split: SplitName = "influence") -> Iterator[pa.Table]:
    """Stream the rows of one shard exactly as featurization sees them (same sampling and caps),
    in tables of at most ``chunk_rows`` rows; memory O(chunk + cap), not O(shard). Target shards keep
    only the rows of ``split`` (featurization uses ``influence``; operators/io/splits.py); corpus shards
    ignore it.

    With ``stats``, ``stats["rows"]`` / ``stats["bytes"]`` get per-domain row counts and UTF-8 text
    bytes of every row of the shard (before sampling and caps).
    """
    ref = ShardRef(uri=task.uri, format=task.format, shard_id=task.shard_id, size_bytes=task.size_bytes)
    if task.role == "corpus":
        cap = src.sampling.max_per_domain
    else:
        cap = src.target(task.target_name).max_examples
    capper = DomainCap(cap, src.sampling.seed) if cap is not None else None
    for table in iter_shard_batches(ref, source_spec(src.corpus, src.targets, task), src.storage, chunk_rows):
        if stats is not None:
            _count_rows(table, stats)
        if task.role == "corpus":
            table = sample_rows(table, src.sampling)
        else:
            table = split_rows(table, src.split, split)
        if capper is not None:
            capper.add(table)
        elif table.num_rows:
            yield table
    if capper is not None:
        kept = capper.result()
        for start in range(0, kept.num_rows, chunk_rows):
            yield kept.slice(start, chunk_rows)


def _count_rows(table: pa.Table, stats: dict[str, dict[str, int]]) -> None:
    if not table.num_rows:
        return
    sizes = pa.table({"domain": table.column("domain"), "bytes": pc.binary_length(table.column("text"))})
    grouped = sizes.group_by("domain").aggregate([("bytes", "sum"), ("bytes", "count")])
    rows, nbytes = stats.setdefault("rows", {}), stats.setdefault("bytes", {})
    for d, b, n in zip(*(grouped.column(c).to_pylist() for c in ("domain", "bytes_sum", "bytes_count"))):
        rows[d] = rows.get(d, 0) + int(n)
        nbytes[d] = nbytes.get(d, 0) + int(b)


def read_task_rows(src: ExampleSource, task: ShardTask, split: SplitName = "influence") -> pa.Table:
    """The rows of one shard exactly as featurization sees them (same sampling), as one table."""
    tables = list(iter_task_rows(src, task, split=split))
    return pa.concat_tables(tables) if tables else SHARD_SCHEMA.empty_table()


def sample_rows_per_group(src: ExampleSource, tasks: list[ShardTask], per_group: int, seed: int,
                          split: SplitName = "influence") -> pa.Table:
    """Up to `per_group` rows per domain (or target), chosen by a stable hash of the id."""
    tables = [read_task_rows(src, t, split) for t in tasks]
    if not tables:
        return pa.table({"id": pa.array([], pa.string()), "domain": pa.array([], pa.string()),
                         "text": pa.array([], pa.string())})
    return cap_per_domain(pa.concat_tables(tables), per_group, seed)


def tokenize_table(tokenizer, table: pa.Table, max_length: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(input_ids, attention_mask, keep) with rows shorter than 2 tokens dropped (keep marks survivors)."""
    tok = tokenize_texts(tokenizer, table.column("text").to_pylist(), max_length)
    keep = tok.valid.numpy()
    index = torch.from_numpy(np.flatnonzero(keep))
    return tok.input_ids[index], tok.attention_mask[index], keep


def domain_pools(src: ExampleSource, plan: Plan, tokenizer, per_domain: int, seed: int,
                 domains: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    table = sample_rows_per_group(src, plan.corpus_tasks(), per_domain, seed)
    pools = {}
    for domain in domains:
        sub = table.filter(pa.compute.equal(table.column("domain"), domain))
        ids, mask, _ = tokenize_table(tokenizer, sub, src.max_length)
        if len(ids):
            pools[domain] = (ids, mask)
    return pools


def reference_set(src: ExampleSource, plan: Plan, tokenizer, total: int, seed: int,
                  target: str | None = None, *, split: SplitName) -> tuple[torch.Tensor, torch.Tensor]:
    """A reference batch from one split of the target sets: one named target, or all mixed by target
    weight. ``split`` says which held-out part (operators/io/splits.py): probes that choose a mixture use
    ``validation``, anything that judges a published mixture uses ``test``."""
    targets = [t for t in src.targets if target is None or t.name == target]
    weights = np.array([t.weight for t in targets], dtype=np.float64)
    counts = np.maximum(1, np.round(total * weights / weights.sum()).astype(int))
    ids, masks = [], []
    for t, n in zip(targets, counts.tolist()):
        table = sample_rows_per_group(src, plan.target_tasks(t.name), n, seed, split)
        if table.num_rows == 0:
            raise ConfigError(f"target {t.name!r} has no examples in its {split!r} split "
                              f"(targets_split: {src.split.model_dump()})")
        i, m, _ = tokenize_table(tokenizer, table, src.max_length)
        ids.append(i)
        masks.append(m)
    width = max(x.shape[1] for x in ids)
    pad = tokenizer.pad_token_id
    ids = [torch.nn.functional.pad(x, (0, width - x.shape[1]), value=pad) for x in ids]
    masks = [torch.nn.functional.pad(x, (0, width - x.shape[1]), value=0) for x in masks]
    return torch.cat(ids), torch.cat(masks)
