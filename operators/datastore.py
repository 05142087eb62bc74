"""Feature datastore (Arrow/Parquet shards, K-FAC ``.npz`` sums) and per-shard completion records.

Layout under a run root URI::

    <root>/features/<shard_id>.parquet   id, domain, n_tokens, loss, features[k]
    <root>/kfac/<shard_id>.npz           optional factor sums
    <root>/_done/<shard_id>.json         CompletionRecord, written after the outputs
"""

from __future__ import annotations

import io
import logging
import zipfile
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, ValidationError

from operators import storage as st
from operators.errors import CorpusError, StorageError
from operators.storage import StorageSpec

log = logging.getLogger(__name__)

FEATURE_DIM_KEY = b"feature_dim"
FINGERPRINT_KEY = b"projector_fingerprint"
_REQUIRED = ("id", "domain", "n_tokens", "loss", "features")


def feature_schema(dim: int, projector_fingerprint: str = "") -> pa.Schema:
    """Schema of a feature shard; metadata records ``feature_dim`` and the projector fingerprint."""
    if dim < 1:
        raise CorpusError(f"feature_schema: dim must be >= 1, got {dim}")
    return pa.schema(
        [
            ("id", pa.string()),
            ("domain", pa.string()),
            ("n_tokens", pa.int32()),
            ("loss", pa.float32()),
            ("features", pa.list_(pa.float32(), dim)),
        ],
        metadata={FEATURE_DIM_KEY: str(dim).encode(), FINGERPRINT_KEY: projector_fingerprint.encode()},
    )


def features_table(
    ids: list[str],
    domains: list[str],
    n_tokens: list[int] | np.ndarray,
    losses: list[float] | np.ndarray,
    features: np.ndarray,
    projector_fingerprint: str,
) -> pa.Table:
    """Build a feature table from per-example values and an ``(n, dim)`` feature matrix."""
    feats = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
    if feats.ndim != 2:
        raise CorpusError(f"features_table: features must be 2-D (n, dim), got shape {feats.shape}")
    n, dim = feats.shape
    sizes = {"ids": len(ids), "domains": len(domains), "n_tokens": len(n_tokens), "losses": len(losses)}
    bad = {k: v for k, v in sizes.items() if v != n}
    if bad:
        raise CorpusError(f"features_table: {bad} do not match {n} feature rows")
    schema = feature_schema(dim, projector_fingerprint)
    flist = pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1), pa.float32()), dim)
    return pa.Table.from_arrays(
        [
            pa.array(list(ids), pa.string()),
            pa.array(list(domains), pa.string()),
            pa.array(np.asarray(n_tokens, dtype=np.int32), pa.int32()),
            pa.array(np.asarray(losses, dtype=np.float32), pa.float32()),
            flist,
        ],
        schema=schema,
    )


def empty_features_table(dim: int, projector_fingerprint: str) -> pa.Table:
    """A zero-row feature table with the full schema."""
    return feature_schema(dim, projector_fingerprint).empty_table()


def feature_dim(table: pa.Table) -> int:
    """Feature dimension from the column type."""
    ftype = table.schema.field("features").type
    if not pa.types.is_fixed_size_list(ftype):
        raise CorpusError(f"features column has type {ftype}, expected fixed_size_list<float32>")
    return int(ftype.list_size)


def projector_fingerprint(table: pa.Table) -> str:
    """Projector fingerprint stored in the schema metadata ('' if absent)."""
    meta = table.schema.metadata or {}
    return meta.get(FINGERPRINT_KEY, b"").decode()


def features_to_numpy(table: pa.Table) -> np.ndarray:
    """The ``(n, dim)`` float32 feature matrix (zero-copy for a single chunk without nulls)."""
    dim = feature_dim(table)
    column = table.column("features")
    if column.num_chunks == 0 or table.num_rows == 0:
        return np.zeros((0, dim), dtype=np.float32)
    arr = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    if arr.null_count:
        raise CorpusError(f"features column has {arr.null_count} null rows")
    flat = arr.flatten()  # respects slice offsets
    if flat.null_count:
        raise CorpusError("features column contains null values")
    values = flat.to_numpy(zero_copy_only=False)
    return values.astype(np.float32, copy=False).reshape(len(arr), dim)


def feature_uri(root: str, shard_id: str) -> str:
    """``<root>/features/<shard_id>.parquet``."""
    return st.join(root, "features", f"{shard_id}.parquet")


def kfac_uri(root: str, shard_id: str) -> str:
    """``<root>/kfac/<shard_id>.npz``."""
    return st.join(root, "kfac", f"{shard_id}.npz")


def completion_uri(root: str, shard_id: str) -> str:
    """``<root>/_done/<shard_id>.json``."""
    return st.join(root, "_done", f"{shard_id}.json")


def write_feature_shard(uri: str, table: pa.Table, storage: StorageSpec | None = None) -> None:
    """Serialise ``table`` to Parquet in memory and write it atomically."""
    missing = [c for c in _REQUIRED if c not in table.column_names]
    if missing:
        raise CorpusError(f"write_feature_shard {uri}: table lacks columns {missing}")
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    st.write_bytes_atomic(uri, sink.getvalue().to_pybytes(), storage)


def read_feature_shard(uri: str, storage: StorageSpec | None = None) -> pa.Table:
    """Read a feature shard; CorpusError naming the URI if it is corrupt or lacks columns."""
    data = st.read_bytes(uri, storage)
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        raise CorpusError(f"feature shard {uri}: corrupt or unreadable Parquet: {exc}") from exc
    missing = [c for c in _REQUIRED if c not in table.column_names]
    if missing:
        raise CorpusError(f"feature shard {uri}: missing columns {missing}")
    try:
        feature_dim(table)
    except CorpusError as exc:
        raise CorpusError(f"feature shard {uri}: {exc}") from exc
    return table


def write_npz_atomic(
    uri: str, arrays: dict[str, np.ndarray], storage: StorageSpec | None = None
) -> None:
    """Write a dict of arrays as an uncompressed ``.npz`` atomically."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    st.write_bytes_atomic(uri, buf.getvalue(), storage)


def read_npz(uri: str, storage: StorageSpec | None = None) -> dict[str, np.ndarray]:
    """Read a ``.npz`` into a dict of arrays (no pickles); CorpusError naming the URI if corrupt."""
    data = st.read_bytes(uri, storage)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CorpusError(f"npz file {uri}: corrupt or unreadable: {exc}") from exc


class CompletionRecord(BaseModel):
    """Proof that one shard's outputs were fully written (written last, atomically)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shard_id: str
    source_uri: str
    role: Literal["corpus", "target"]
    target_name: str | None = None
    output_uri: str
    n_examples: int
    n_tokens: int
    domain_counts: dict[str, int]
    domain_tokens: dict[str, int]
    feature_dim: int
    projector_fingerprint: str
    worker: str
    attempt: int
    started_at: str
    finished_at: str
    duration_s: float
    skipped_nonfinite: int = 0  # examples dropped because their features or loss were NaN/Inf


def write_completion(root: str, record: CompletionRecord, storage: StorageSpec | None = None) -> str:
    """Atomically write the record to ``completion_uri(root, shard_id)``; returns that URI.

    Call this only after the feature shard (and K-FAC sums) are written.
    """
    uri = completion_uri(root, record.shard_id)
    st.write_json_atomic(uri, record.model_dump(mode="json"), storage)
    return uri


def _parse_record(uri: str, data: bytes) -> CompletionRecord:
    try:
        return CompletionRecord.model_validate_json(data)
    except ValidationError as exc:
        raise CorpusError(f"completion record {uri}: invalid: {exc}") from exc


def read_completion(
    root: str, shard_id: str, storage: StorageSpec | None = None
) -> CompletionRecord | None:
    """The shard's completion record, or None if absent; CorpusError if it is unreadable."""
    uri = completion_uri(root, shard_id)
    try:
        data = st.read_bytes(uri, storage)
    except FileNotFoundError:
        return None
    return _parse_record(uri, data)


def list_completions(
    root: str, storage: StorageSpec | None = None
) -> dict[str, CompletionRecord]:
    """All readable completion records under ``root`` by shard id.

    Unreadable or invalid records are logged and treated as not complete (the shard is redone).
    """
    uris = st.list_files(st.join(root, "_done"), (".json",), storage)
    out: dict[str, CompletionRecord] = {}
    for uri, data in st.read_many(uris, storage).items():
        if isinstance(data, StorageError):
            log.warning("ignoring unreadable completion record %s: %s", uri, data)
            continue
        try:
            record = _parse_record(uri, data)
        except CorpusError as exc:
            log.warning("ignoring %s", exc)
            continue
        expected = uri.rstrip("/").rsplit("/", 1)[-1][: -len(".json")]
        if record.shard_id != expected:
            log.warning("ignoring completion record %s: shard_id %r", uri, record.shard_id)
            continue
        out[record.shard_id] = record
    return dict(sorted(out.items()))
