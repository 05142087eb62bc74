"""Map step of influence aggregation: one feature shard → small statistics (runs in a Ray task).

Pass 1 (:class:`PreconditionerJob`): a corpus shard → Gram ΦᵀΦ and n (``gauss_newton``) or its K-FAC
factor sums (``kfac``); a target shard → token-weighted target sums (operators/influence/group.py).
Pass 2 (:class:`ScoreJob`): a corpus shard and the preconditioned directions → per-example scores
written to a score shard, plus per-domain score sums, counts, tokens and Poisson-bootstrap sums.

Each pass reads a feature shard once, in record batches of ``batch_rows``, so memory does not grow
with shard size. Both passes store their per-shard results under deterministic keys in the shard's own
datastore folder (content-addressed by the shard key; the run root for plans without a datastore), so
every analysis run on the same features shares them and a changed shard never sees another's. Pass 1 is keyed by a hash of the shard's completion record and the
pass settings; pass 2's per-example scores by a hash of the directions (they depend on nothing else),
its statistics by that and the bootstrap settings. A new bootstrap on known directions reads the small
score shard instead of the features. A retry overwrites identical objects, and a resumed or repeated
aggregation finds the stats file (written last) and skips the shard. No Ray imports here.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from operators.features import datastore

from operators.io import storage
from operators.errors import CorpusError
from operators.influence.group import BootstrapSums, per_example_scores, poisson_weights, shard_seed, target_token_sums
from operators.influence.precondition import GaussNewtonPreconditioner

log = logging.getLogger(__name__)

BATCH_ROWS = 8192
_COLUMNS = ["id", "domain", "n_tokens", "features"]


def iter_shard_feature_batches(root: str, shard_id: str, spec: storage.StorageSpec | None, columns: list[str],
                               batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Record batches of every part of a shard's features, in order (datastore.shard_part_uris); each
    part is checked against the size and sha256 in the shard's completion record
    (:class:`~operators.features.datastore.FeaturePartCorrupt` when it differs)."""
    record = datastore.read_completion(root, shard_id, spec)
    for uri in datastore.shard_part_uris(root, shard_id, spec):
        yield from iter_feature_batches(uri, spec, columns, batch_rows, record)


def iter_feature_batches(uri: str, spec: storage.StorageSpec | None, columns: list[str],
                         batch_rows: int = BATCH_ROWS,
                         record: datastore.CompletionRecord | None = None) -> Iterator[pa.RecordBatch]:
    """Record batches of one feature Parquet file; CorpusError naming the URI if missing or corrupt.
    With the shard's ``record``, the part's bytes are checked against it first."""
    store = storage.storage_for(uri, spec)
    try:
        opened = (io.BytesIO(datastore.verified_part_bytes(uri, record, spec)) if record is not None
                  else store.open(uri))
        with opened as fh:
            parquet = pq.ParquetFile(fh)
            names = parquet.schema_arrow.names
            missing = [c for c in columns if c not in names]
            if missing:
                raise CorpusError(f"feature shard {uri}: missing columns {missing}")
            if "features" in columns and not pa.types.is_fixed_size_list(parquet.schema_arrow.field("features").type):
                raise CorpusError(f"feature shard {uri}: features column is not fixed_size_list<float32>")
            yield from parquet.iter_batches(batch_size=batch_rows, columns=columns)
    except FileNotFoundError as exc:
        raise CorpusError(f"feature shard {uri}: not found ({exc})") from exc
    except (pa.ArrowException, OSError) as exc:
        raise CorpusError(f"feature shard {uri}: corrupt or unreadable Parquet: {exc}") from exc


def batch_features(batch: pa.RecordBatch, uri: str) -> np.ndarray:
    """(m, k) float32 features of one record batch."""
    try:
        return datastore.features_to_numpy(pa.Table.from_batches([batch]))
    except CorpusError as exc:
        raise CorpusError(f"feature shard {uri}: {exc}") from exc


def domain_codes(column: pa.Array, order: list[str]) -> np.ndarray:
    """Index of each label in ``order`` (-1 for labels not in it)."""
    codes = pc.index_in(column, value_set=pa.array(order, pa.string()))
    return codes.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


@dataclass(frozen=True)
class PreconditionerJob:
    """Pass 1 for one shard: ``(kind, shard_id, role)`` → small statistics (a dict of arrays)."""

    root: str
    spec: storage.StorageSpec
    preconditioner: Literal["identity", "gauss_newton", "kfac"]
    targets: tuple[str, ...]
    loss_reduction: Literal["mean", "sum"]
    batch_rows: int = BATCH_ROWS
    shard_roots: dict[str, str] | None = None  # datastore folder per shard (default: ``root``)

    def froot(self, shard_id: str) -> str:
        return (self.shard_roots or {}).get(shard_id, self.root)

    def __call__(self, item: tuple[str, str]) -> dict[str, np.ndarray]:
        shard_id, role = item
        if role == "corpus" and self.preconditioner == "kfac":
            return self._compute(shard_id, role)  # the featurizer already stored these sums
        record = datastore.read_completion(self.froot(shard_id), shard_id, self.spec)
        if record is None:  # features written outside the featurizer: nothing names their version
            return self._compute(shard_id, role)
        uri = pass1_stats_uri(self.froot(shard_id), self.key(record.model_dump_json()), role, shard_id)
        if storage.exists(uri, self.spec):
            return {**datastore.read_npz(uri, self.spec), "source": np.asarray("cache")}
        out = self._compute(shard_id, role)
        datastore.write_npz_atomic(uri, out, self.spec)
        return out

    def key(self, record_json: str) -> str:
        """Short hash of everything that changes a shard's pass-1 statistics."""
        h = hashlib.sha256(record_json.encode())
        h.update(f"{self.preconditioner}|{list(self.targets)}|{self.loss_reduction}".encode())
        return h.hexdigest()[:16]

    def _compute(self, shard_id: str, role: str) -> dict[str, np.ndarray]:
        if role == "target":
            return self._target(shard_id)
        if self.preconditioner == "kfac":
            from workflows.jobs.featurize_shard import kfac_from_arrays

            arrays = datastore.read_npz(datastore.kfac_uri(self.froot(shard_id), shard_id), self.spec)
            return {"kfac": {n: (a.numpy(), b.numpy(), c) for n, (a, b, c) in kfac_from_arrays(arrays).items()}}
        uri = datastore.feature_uri(self.froot(shard_id), shard_id)
        pre: GaussNewtonPreconditioner | None = None
        for batch in iter_shard_feature_batches(self.froot(shard_id), shard_id, self.spec, ["features"], self.batch_rows):
            feats = batch_features(batch, uri)
            pre = pre or GaussNewtonPreconditioner(feats.shape[1])
            pre.update(feats)
        return pre.to_state() if pre is not None else {}

    def _target(self, shard_id: str) -> dict[str, np.ndarray]:
        uri = datastore.feature_uri(self.froot(shard_id), shard_id)
        out: dict[str, np.ndarray] = {}
        names = list(self.targets)
        for batch in iter_shard_feature_batches(self.froot(shard_id), shard_id, self.spec, ["domain", "n_tokens", "features"],
                                                self.batch_rows):
            labels = np.asarray(batch.column("domain").to_pylist(), dtype=object)
            n_tok = batch.column("n_tokens").to_numpy(zero_copy_only=False)
            sums, tokens, counts = target_token_sums(batch_features(batch, uri), n_tok, labels, names,
                                                     self.loss_reduction)
            for key, value in (("sums", sums), ("tokens", tokens), ("counts", counts)):
                out[key] = out[key] + value if key in out else value
        return out


def pass1_stats_uri(root: str, key: str, role: str, shard_id: str) -> str:
    return storage.join(root, "influence", "pass1", role, key, f"{shard_id}.npz")


def score_key(directions: np.ndarray, order: list[str], n_boot: int, seed: int) -> str:
    """Short hash naming pass-2 outputs (depends on everything that changes them)."""
    h = hashlib.sha256(np.ascontiguousarray(directions, dtype=np.float64).tobytes())
    h.update(f"{order}|{n_boot}|{seed}|token-sums".encode())  # stats hold example- and token-weighted sums
    return h.hexdigest()[:16]


def scores_key(directions: np.ndarray, order: list[str]) -> str:
    """Short hash naming per-example score shards: the directions and the domain order only."""
    h = hashlib.sha256(np.ascontiguousarray(directions, dtype=np.float64).tobytes())
    h.update(f"{order}|scores".encode())
    return h.hexdigest()[:16]


def score_shard_uri(root: str, key: str, shard_id: str) -> str:
    return storage.join(root, "influence", key, "scores", f"{shard_id}.parquet")


def score_stats_uri(root: str, key: str, shard_id: str) -> str:
    return storage.join(root, "influence", key, "stats", f"{shard_id}.npz")


@dataclass(frozen=True)
class ScoreJob:
    """Pass 2 for one corpus shard → {sums (K,V), counts (K,), tokens (K,), boot_sums (B,K,V),
    boot_counts (B,K), token-weighted tok_sums (K,V), boot_tok_sums, boot_tok_counts, rows, dropped};
    writes the score shard, then the stats (the completion mark)."""

    root: str
    spec: storage.StorageSpec
    order: tuple[str, ...]
    directions: np.ndarray  # (V, k) float64
    n_boot: int
    seed: int
    batch_rows: int = BATCH_ROWS
    shard_roots: dict[str, str] | None = None  # datastore folder per shard (default: ``root``)

    def froot(self, shard_id: str) -> str:
        return (self.shard_roots or {}).get(shard_id, self.root)

    @property
    def key(self) -> str:
        return score_key(self.directions, list(self.order), self.n_boot, self.seed)

    @property
    def scores_key(self) -> str:
        return scores_key(self.directions, list(self.order))

    def _cached_scores(self, shard_id: str) -> pa.Table | None:
        """This shard's score shard for these directions, or None when there is none or it does not read
        (then the scores are computed from the features again and the score shard rewritten)."""
        uri = score_shard_uri(self.froot(shard_id), self.scores_key, shard_id)
        if not storage.exists(uri, self.spec):
            return None
        try:
            table = pq.read_table(io.BytesIO(storage.read_bytes(uri, self.spec)))
        except (OSError, pa.ArrowException) as exc:
            log.warning("score shard %s does not read (%s); scoring shard %s from its features again", uri, exc,
                        shard_id)
            return None
        n_v = self.directions.shape[0]
        scores = table.schema.field("scores").type if "scores" in table.schema.names else None
        if table.schema.names[:4] != ["id", "domain", "n_tokens", "scores"] or \
                getattr(scores, "list_size", None) != n_v or scores.value_type != pa.float64():
            log.warning("score shard %s has another layout; scoring shard %s from its features again", uri, shard_id)
            return None
        return table

    def _score_batches(self, shard_id: str, cached: pa.Table | None) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        """(batch with id, domain, n_tokens; its per-example scores, float64 as stored), from ``cached``
        (the shard's score shard) or else from its features: both give the same bits."""
        if cached is not None:
            n_v = self.directions.shape[0]
            for batch in cached.to_batches(max_chunksize=self.batch_rows):
                flat = batch.column("scores").flatten().to_numpy(zero_copy_only=False)
                yield batch, flat.reshape(batch.num_rows, n_v).astype(np.float64, copy=False)
            return
        uri = datastore.feature_uri(self.froot(shard_id), shard_id)
        for batch in iter_shard_feature_batches(self.froot(shard_id), shard_id, self.spec, _COLUMNS, self.batch_rows):
            scores = per_example_scores(batch_features(batch, uri), self.directions)
            yield batch, np.asarray(scores, dtype=np.float64)

    def __call__(self, shard_id: str) -> dict[str, np.ndarray]:
        stats_uri = score_stats_uri(self.froot(shard_id), self.key, shard_id)
        if storage.exists(stats_uri, self.spec):
            return {**datastore.read_npz(stats_uri, self.spec), "source": np.asarray("stats")}
        table = self._cached_scores(shard_id)
        cached = table is not None
        order = list(self.order)
        n_k, n_v = len(order), self.directions.shape[0]
        sums = np.zeros((n_k, n_v))
        counts = np.zeros(n_k, dtype=np.int64)
        tokens = np.zeros(n_k, dtype=np.int64)
        boot = BootstrapSums(self.n_boot, n_k, n_v)
        boot_tok = BootstrapSums(self.n_boot, n_k, n_v)
        tok_sums = np.zeros((n_k, n_v))
        rng = shard_seed(self.seed, shard_id)
        rows = dropped = 0
        sink = pa.BufferOutputStream()
        schema = pa.schema([("id", pa.string()), ("domain", pa.string()), ("n_tokens", pa.int32()),
                            ("scores", pa.list_(pa.float64(), n_v))])
        with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
            for batch, scores in self._score_batches(shard_id, table):
                codes = domain_codes(batch.column("domain"), order)
                n_tok = batch.column("n_tokens").to_numpy(zero_copy_only=False).astype(np.int64)
                keep = codes >= 0
                rows += int(keep.sum())
                dropped += int((~keep).sum())
                if self.n_boot:  # drawn for every row (kept or not): weights depend on the row only
                    weights = poisson_weights(rng, len(codes), self.n_boot)
                    boot.update(scores[keep], codes[keep], weights[keep])
                    boot_tok.update(scores[keep], codes[keep], weights[keep], row_weight=n_tok[keep])
                sums += np.stack([np.bincount(codes[keep], weights=scores[keep, v], minlength=n_k)
                                  for v in range(n_v)], axis=1)
                tok_sums += np.stack([np.bincount(codes[keep], weights=scores[keep, v] * n_tok[keep], minlength=n_k)
                                      for v in range(n_v)], axis=1)
                counts += np.bincount(codes[keep], minlength=n_k)
                tokens += np.bincount(codes[keep], weights=n_tok[keep], minlength=n_k).astype(np.int64)
                if cached:
                    continue
                flat = pa.array(scores.reshape(-1), pa.float64())
                writer.write_batch(pa.record_batch(
                    [batch.column("id"), batch.column("domain"), batch.column("n_tokens").cast(pa.int32()),
                     pa.FixedSizeListArray.from_arrays(flat, n_v)], schema=schema))
        if not cached:  # scores read from a score shard are not written again
            storage.write_bytes_atomic(score_shard_uri(self.froot(shard_id), self.scores_key, shard_id),
                                       sink.getvalue().to_pybytes(), self.spec)
        out = {"sums": sums, "counts": counts, "tokens": tokens, "boot_sums": boot.sums,
               "boot_counts": boot.counts, "tok_sums": tok_sums, "boot_tok_sums": boot_tok.sums,
               "boot_tok_counts": boot_tok.counts, "rows": np.asarray(rows), "dropped": np.asarray(dropped)}
        datastore.write_npz_atomic(stats_uri, out, self.spec)
        return {**out, "source": np.asarray("scores" if cached else "features")}
