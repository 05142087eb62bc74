"""Feature datastore (Arrow/Parquet shards, K-FAC ``.npz`` sums) and per-shard completion records.

Layout under a shard's datastore folder (``<output>/datastore/<featurizer key>/shards/<shard key>``,
workflows/run/keys.py; older runs used their run root)::

    <root>/features/<shard_id>/part-00000.parquet   id, domain, n_tokens, loss, features[k]
    <root>/kfac/<shard_id>.npz                      optional factor sums
    <root>/_done/<shard_id>.json                    CompletionRecord (parts with size + sha256), written last

Parts check themselves: a finished shard's part sizes are compared with its record whenever its
features are reused (:func:`check_part_sizes`), and each part's sha256 when it is read for aggregation
(:func:`verified_part_bytes`). A mismatch raises :class:`FeaturePartCorrupt`; the caller invalidates the
record and featurizes that shard again.

A shard's features are split into parts of at most ``part_rows`` rows, so input shard size never
sets memory; :func:`shard_part_uris` lists them (the aggregation streams them in record batches,
workflows/jobs/aggregate_shard.py). Runs of older versions wrote one file
``<root>/features/<shard_id>.parquet``; :func:`shard_part_uris` accepts both.
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from operators.io import storage as st
from operators.errors import CorpusError, StorageError
from operators.io.storage import StorageSpec

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


#: Default bytes of features per part (the part row count is this over 4 · dim).
PART_BYTES = 64 << 20
PART_PREFIX = "part-"


def feature_uri(root: str, shard_id: str) -> str:
    """``<root>/features/<shard_id>``: the folder holding the shard's feature parts."""
    return st.join(root, "features", shard_id)


def legacy_feature_uri(root: str, shard_id: str) -> str:
    """``<root>/features/<shard_id>.parquet`` (single-file shards of older runs)."""
    return st.join(root, "features", f"{shard_id}.parquet")


def feature_part_uri(root: str, shard_id: str, index: int) -> str:
    """``<root>/features/<shard_id>/part-<index:05d>.parquet``."""
    return st.join(feature_uri(root, shard_id), f"{PART_PREFIX}{index:05d}.parquet")


def part_rows_for(dim: int, part_rows: int | None = None) -> int:
    """Rows per feature part: ``part_rows`` if given, else ``PART_BYTES`` of float32 features."""
    return int(part_rows) if part_rows else max(1, PART_BYTES // (4 * max(1, dim)))


def kfac_uri(root: str, shard_id: str) -> str:
    """``<root>/kfac/<shard_id>.npz``."""
    return st.join(root, "kfac", f"{shard_id}.npz")


def completion_uri(root: str, shard_id: str) -> str:
    """``<root>/_done/<shard_id>.json``."""
    return st.join(root, "_done", f"{shard_id}.json")


def write_feature_shard(uri: str, table: pa.Table, storage: StorageSpec | None = None) -> tuple[int, str]:
    """Serialise ``table`` to Parquet in memory and write it atomically; returns (bytes, sha256)."""
    missing = [c for c in _REQUIRED if c not in table.column_names]
    if missing:
        raise CorpusError(f"write_feature_shard {uri}: table lacks columns {missing}")
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue().to_pybytes()
    st.write_bytes_atomic(uri, data, storage)
    return len(data), hashlib.sha256(data).hexdigest()


def list_feature_parts(uri: str, storage: StorageSpec | None = None) -> list[str]:
    """Part files of a feature folder in part order (a ``.parquet`` URI is its own single part)."""
    if uri.endswith(".parquet"):
        return [uri]
    parts = [u for u in st.list_files(uri, (".parquet",), storage)
             if u.rsplit("/", 1)[-1].startswith(PART_PREFIX)]
    if not parts:
        raise CorpusError(f"feature shard {uri}: no {PART_PREFIX}*.parquet files")
    return sorted(parts)


def shard_part_uris(root: str, shard_id: str, storage: StorageSpec | None = None) -> list[str]:
    """The exact parts of a shard: from its completion record, else the legacy single file, else
    the part folder listing (an unfinished shard)."""
    record = read_completion(root, shard_id, storage)
    if record is not None:
        return list(record.parts) or [record.output_uri]
    legacy = legacy_feature_uri(root, shard_id)
    if st.exists(legacy, storage):
        return [legacy]
    return list_feature_parts(feature_uri(root, shard_id), storage)


class FeaturePartWriter:
    """Buffer feature rows and write ``part-XXXXX.parquet`` files of ``part_rows`` rows in a
    background thread (one write in flight, so Parquet encoding overlaps compute).

    Parts are deterministic (same rows → same parts), so a retried shard overwrites them; ``close``
    removes parts left beyond the new count by an earlier attempt and returns ``[(uri, rows)]``.
    """

    def __init__(self, root: str, shard_id: str, dim: int, fingerprint: str, part_rows: int,
                 storage: StorageSpec | None = None) -> None:
        self.root, self.shard_id, self.dim, self.fingerprint = root, shard_id, dim, fingerprint
        self.part_rows, self.storage = part_rows, storage
        self._buf: list[tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray]] = []
        self._buffered = 0
        self._parts: list[tuple[str, int]] = []
        self._digests: list[tuple[int, str]] = []  # (bytes, sha256) of each written part, in order
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"parts-{shard_id}")
        self._pending: Future | None = None

    def add(self, ids: list[str], domains: list[str], n_tokens: np.ndarray, losses: np.ndarray,
            features: np.ndarray) -> None:
        """Append rows; full parts are handed to the writer thread."""
        self._buf.append((list(ids), list(domains), np.asarray(n_tokens), np.asarray(losses),
                          np.asarray(features, dtype=np.float32)))
        self._buffered += len(ids)
        while self._buffered >= self.part_rows:
            self._flush(self.part_rows)

    def _flush(self, rows: int) -> None:
        ids, doms, ntok, loss, feats = (list(x) for x in zip(*self._buf))
        all_ids = [i for chunk in ids for i in chunk]
        all_doms = [d for chunk in doms for d in chunk]
        ntok_a, loss_a, feats_a = np.concatenate(ntok), np.concatenate(loss), np.concatenate(feats)
        table = features_table(all_ids[:rows], all_doms[:rows], ntok_a[:rows], loss_a[:rows],
                               feats_a[:rows], self.fingerprint)
        rest = len(all_ids) - rows
        tail = (all_ids[rows:], all_doms[rows:], ntok_a[rows:], loss_a[rows:], feats_a[rows:])
        self._buf = [tail] if rest else []
        self._buffered = rest
        uri = feature_part_uri(self.root, self.shard_id, len(self._parts))
        self._parts.append((uri, rows))
        self._wait()
        self._pending = self._pool.submit(write_feature_shard, uri, table, self.storage)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._digests.append(pending.result())

    @property
    def digests(self) -> list[tuple[int, str]]:
        """``(bytes, sha256)`` of each part, in part order (complete after :meth:`close`)."""
        return list(self._digests)

    def close(self) -> list[tuple[str, int]]:
        """Write the last (possibly empty-shard) part, wait for all writes; the parts in order."""
        try:
            if self._buffered or not self._parts:
                if self._buffered:
                    self._flush(self._buffered)
                else:
                    uri = feature_part_uri(self.root, self.shard_id, 0)
                    self._parts.append((uri, 0))
                    self._digests.append(write_feature_shard(uri, empty_features_table(self.dim, self.fingerprint),
                                                             self.storage))
            self._wait()
        finally:
            self._pool.shutdown(wait=True)
        keep = {u.rsplit("/", 1)[-1] for u, _ in self._parts}
        folder = feature_uri(self.root, self.shard_id)
        for stale in st.list_files(folder, (".parquet",), self.storage):
            if stale.rsplit("/", 1)[-1] not in keep:
                st.delete(stale, self.storage)
        return list(self._parts)

    def abort(self) -> None:
        """Stop the writer thread after an error (pending writes finish; nothing is recorded)."""
        self._pool.shutdown(wait=True)


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
    parts: list[str] = Field(default_factory=list)  # part URIs in order (empty: one legacy file)
    part_rows: list[int] = Field(default_factory=list)
    domain_rows_all: dict[str, int] = Field(default_factory=dict)  # every row, before sampling
    domain_bytes_all: dict[str, int] = Field(default_factory=dict)  # UTF-8 text bytes, every row
    domain_tokens_untruncated: dict[str, int] = Field(default_factory=dict)  # featurized rows
    domain_bytes_featurized: dict[str, int] = Field(default_factory=dict)  # featurized rows
    part_bytes: list[int] = Field(default_factory=list)  # size of each part (checked on reuse)
    part_sha256: list[str] = Field(default_factory=list)  # checksum of each part (checked when read)
    source_key: str | None = None  # datastore shard key of the input it was made from


class FeaturePartCorrupt(CorpusError):
    """A feature part does not match its completion record (missing, other size, other checksum).

    ``part_uri`` names the file and ``shard_id`` its shard; the shard must be featurized again."""

    def __init__(self, part_uri: str, shard_id: str, reason: str) -> None:
        super().__init__(f"feature part {part_uri} (shard {shard_id}): {reason}")
        self.part_uri, self.shard_id, self.reason = part_uri, shard_id, reason

    def __reduce__(self):  # survives pickling across Ray
        return (FeaturePartCorrupt, (self.part_uri, self.shard_id, self.reason))


def record_parts(record: CompletionRecord) -> list[tuple[str, int | None, str | None]]:
    """``(uri, bytes, sha256)`` of each part of a record (None where an older record has no value)."""
    parts = list(record.parts) or [record.output_uri]
    sizes = record.part_bytes if len(record.part_bytes) == len(parts) else [None] * len(parts)
    sums = record.part_sha256 if len(record.part_sha256) == len(parts) else [None] * len(parts)
    return list(zip(parts, sizes, sums))


def check_part_sizes(record: CompletionRecord, storage: StorageSpec | None = None) -> FeaturePartCorrupt | None:
    """The first part of a finished shard that is missing or has another size than recorded (one
    listing of the shard's feature folder), else None."""
    parts = record_parts(record)
    if all(size is None for _, size, _ in parts):
        return None
    listed = dict(st.list_file_infos(record.output_uri, (".parquet",), storage))
    for uri, size, _ in parts:
        if uri not in listed:
            return FeaturePartCorrupt(uri, record.shard_id, "not found")
        if size is not None and listed[uri] is not None and listed[uri] != size:
            return FeaturePartCorrupt(uri, record.shard_id, f"{listed[uri]} bytes, its completion record says {size}")
    return None


def verified_part_bytes(uri: str, record: CompletionRecord | None, storage: StorageSpec | None = None) -> bytes:
    """The bytes of one feature part, checked against the size and sha256 its record lists (parts
    without a record or without recorded checksums are read unchecked)."""
    try:
        data = st.read_bytes(uri, storage)
    except FileNotFoundError:
        if record is None:
            raise CorpusError(f"feature shard {uri}: not found") from None
        raise FeaturePartCorrupt(uri, record.shard_id, "not found") from None
    if record is None:
        return data
    expected = {u: (size, digest) for u, size, digest in record_parts(record)}.get(uri)
    if expected is None:
        return data
    size, digest = expected
    if size is not None and len(data) != size:
        raise FeaturePartCorrupt(uri, record.shard_id, f"{len(data)} bytes, its completion record says {size}")
    if digest is not None and hashlib.sha256(data).hexdigest() != digest:
        raise FeaturePartCorrupt(uri, record.shard_id, "sha256 differs from its completion record")
    return data


def verify_shard(root: str, record: CompletionRecord, storage: StorageSpec | None = None,
                 checksums: bool = True) -> list[FeaturePartCorrupt]:
    """Every bad part of one finished shard: sizes from one listing, then (``checksums``) each part read
    and hashed."""
    bad = check_part_sizes(record, storage)
    if bad is not None:
        return [bad]
    out: list[FeaturePartCorrupt] = []
    if checksums:
        for uri, _, _ in record_parts(record):
            try:
                verified_part_bytes(uri, record, storage)
            except FeaturePartCorrupt as exc:
                out.append(exc)
    return out


def invalidate(root: str, shard_id: str, storage: StorageSpec | None = None) -> None:
    """Drop a shard's completion record, so the next featurize stage makes its features again."""
    uri = completion_uri(root, shard_id)
    if st.exists(uri, storage):
        st.delete(uri, storage)


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
        record = _usable_record(uri, data, uri.rstrip("/").rsplit("/", 1)[-1][: -len(".json")])
        if record is not None:
            out[record.shard_id] = record
    return dict(sorted(out.items()))


def _usable_record(uri: str, data: bytes | StorageError, shard_id: str) -> CompletionRecord | None:
    """The completion record read from ``uri`` if it is valid and names ``shard_id``; else None (logged,
    except for a record that does not exist)."""
    if isinstance(data, StorageError):
        if not isinstance(data, FileNotFoundError):
            log.warning("ignoring unreadable completion record %s: %s", uri, data)
        return None
    try:
        record = _parse_record(uri, data)
    except CorpusError as exc:
        log.warning("ignoring %s", exc)
        return None
    if record.shard_id != shard_id:
        log.warning("ignoring completion record %s: shard_id %r", uri, record.shard_id)
        return None
    return record


def read_completions(roots: dict[str, str], storage: StorageSpec | None = None) -> dict[str, CompletionRecord]:
    """The completion records that exist of the shards ``{shard_id: root}`` (read concurrently);
    unreadable or invalid ones are logged and treated as absent (the shard is redone)."""
    uris = {completion_uri(root, sid): sid for sid, root in roots.items()}
    out: dict[str, CompletionRecord] = {}
    for uri, data in st.read_many(list(uris), storage).items():
        record = _usable_record(uri, data, uris[uri])
        if record is not None:
            out[record.shard_id] = record
    return dict(sorted(out.items()))


def estimated_tokens_available(
    records: list[CompletionRecord] | dict[str, CompletionRecord],
) -> dict[str, int]:
    """Untruncated tokens per domain in the whole corpus, estimated from corpus completion records.

    Per domain ``Σ bytes_all × Σ tokens_untruncated / Σ bytes_featurized`` over records that carry
    these fields (exact when every row was featurized); records without them (older runs) add
    their featurized ``domain_tokens``.
    """
    items = list(records.values()) if isinstance(records, dict) else list(records)
    bytes_all: dict[str, int] = {}
    tokens: dict[str, int] = {}
    bytes_feat: dict[str, int] = {}
    fallback: dict[str, int] = {}
    for rec in items:
        if rec.role != "corpus":
            continue
        if not rec.domain_bytes_all:
            for d, n in rec.domain_tokens.items():
                fallback[d] = fallback.get(d, 0) + n
            continue
        for src_, dst in ((rec.domain_bytes_all, bytes_all), (rec.domain_tokens_untruncated, tokens),
                          (rec.domain_bytes_featurized, bytes_feat)):
            for d, n in src_.items():
                dst[d] = dst.get(d, 0) + n
    out = dict(fallback)
    for d, b_all in bytes_all.items():
        if bytes_feat.get(d, 0) > 0:
            out[d] = out.get(d, 0) + int(round(b_all * tokens.get(d, 0) / bytes_feat[d]))
        else:
            out.setdefault(d, 0)
    return dict(sorted(out.items()))
