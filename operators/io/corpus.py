"""Shards of a pretraining corpus (Parquet/JSONL(.gz/.zst), local or s3://) grouped into domains.

Reading streams a shard in record batches (:func:`iter_shard_batches`; memory O(batch), not O(shard))
and normalises each to a table with exactly the string columns ``id``, ``domain`` and ``text``;
sampling is a deterministic function of ``(seed, id)`` so the selected rows do not
depend on how the corpus is split into shards.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from operators.io import storage as st
from operators.errors import CorpusError, StorageError
from operators.io.names import SafeName, check_shard_table
from operators.io.storage import StorageSpec

PARQUET_SUFFIXES = (".parquet", ".pq")
JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson", ".ndjson.gz", ".jsonl.zst",
                  ".json.zst", ".ndjson.zst")
#: Rows per record batch when streaming a shard (memory is O(batch), not O(shard)).
BATCH_ROWS = 4096
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
SHARD_SCHEMA = pa.schema([("id", pa.string()), ("domain", pa.string()), ("text", pa.string())])


def absolute_location(uri: str) -> str:
    """URIs with a scheme stay as they are; local paths become absolute (actors run elsewhere)."""
    return uri if "://" in uri else os.path.abspath(os.path.expanduser(uri))


#: A local path (made absolute on the driver, so actors with another cwd agree) or a URI.
Location = Annotated[str, AfterValidator(absolute_location)]


class SourceSpec(BaseModel):
    """Where a set of examples lives and which columns hold text and ids (corpus or target set)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    paths: list[Location] = Field(min_length=1)
    format: Literal["auto", "parquet", "jsonl"] = "auto"
    text_column: str = Field(default="text", min_length=1)
    id_column: str | None = Field(default="id", min_length=1)


class CorpusSpec(SourceSpec):
    """The pretraining corpus: its shards and how rows map to domains."""

    domain_column: str | None = Field(default="domain", min_length=1)
    domain_from_path: dict[str, str] = Field(default_factory=dict)
    domains: list[str] | None = None

    @field_validator("domain_from_path")
    @classmethod
    def _regexes_compile(cls, rules: dict[str, str]) -> dict[str, str]:
        for pattern in rules:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"domain_from_path: invalid regex {pattern!r}: {exc}") from exc
        return rules

    @model_validator(mode="after")
    def _domain_source(self) -> CorpusSpec:
        if self.domain_column is None and not self.domain_from_path:
            raise ValueError("domain_column is None: give domain_from_path rules (regex -> domain)")
        return self


class TargetSpec(SourceSpec):
    """One target set: what the mixture should serve. Read like a corpus whose rows all belong to the
    target's name (:meth:`as_corpus`)."""

    name: SafeName
    weight: float = Field(default=1.0, gt=0)
    max_examples: int | None = Field(default=None, gt=0)

    def as_corpus(self) -> CorpusSpec:
        return CorpusSpec(paths=list(self.paths), format=self.format, text_column=self.text_column,
                          id_column=self.id_column, domain_column=None, domain_from_path={".*": self.name})


class ShardRef(BaseModel):
    """One corpus file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str
    format: Literal["parquet", "jsonl"]
    shard_id: str
    size_bytes: int | None = None
    version: str | None = None  # ETag / version id / mtime as listed (the feature datastore keys on it)


class SamplingSpec(BaseModel):
    """Per-example Bernoulli sampling by hash, optional per-domain cap and a minimum length."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate: float = Field(default=1.0, gt=0.0, le=1.0)
    max_per_domain: int | None = Field(default=None, ge=1)
    seed: int = 0
    min_chars: int = Field(default=1, ge=0)


def format_for(uri: str) -> Literal["parquet", "jsonl"] | None:
    """Infer the shard format from the file suffix (None if unknown)."""
    low = uri.lower()
    if low.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if low.endswith(JSONL_SUFFIXES):
        return "jsonl"
    return None


def shard_id_for(uri: str) -> str:
    """Stable short id: readable file stem plus an 8-hex hash of the full URI."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    low = name.lower()
    for suffix in sorted(PARQUET_SUFFIXES + JSONL_SUFFIXES, key=len, reverse=True):
        if low.endswith(suffix):
            name = name[: -len(suffix)]
            break
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:40] or "shard"
    digest = hashlib.sha1(uri.encode("utf-8")).hexdigest()[:8]
    return f"{stem}-{digest}"


def _listed_ok(uri: str, fmt: str) -> bool:
    base = uri.rstrip("/").rsplit("/", 1)[-1]
    if base.startswith(("_", ".")):
        return False
    return format_for(uri) is not None if fmt == "auto" else True


def discover_shards(spec: CorpusSpec, storage: StorageSpec | None = None) -> list[ShardRef]:
    """List the corpus shards (sorted by URI, deduplicated); CorpusError names a path that
    matches no shard."""
    found: dict[str, tuple[int | None, str | None]] = {}
    for path in spec.paths:
        infos = st.list_file_versions(path, None, storage)
        canonical = st.storage_for(path, storage).canonical(path)
        direct = len(infos) == 1 and infos[0][0].rstrip("/") == canonical
        matched = [(u, (s, v)) for u, s, v in infos if direct or _listed_ok(u, spec.format)]
        if not matched:
            what = "no files" if not infos else f"no shard files among {len(infos)} files"
            raise CorpusError(
                f"corpus path {path!r} matched {what} (expected suffixes "
                f"{', '.join(PARQUET_SUFFIXES + JSONL_SUFFIXES)} or an explicit format)"
            )
        found.update(matched)
    shards = []
    for uri in sorted(found):
        fmt = format_for(uri) if spec.format == "auto" else spec.format
        if fmt is None:
            raise CorpusError(f"cannot infer the format of shard {uri}: set format explicitly")
        shards.append(ShardRef(uri=uri, format=fmt, shard_id=shard_id_for(uri), size_bytes=found[uri][0],
                               version=found[uri][1]))
    return shards


def _open_input(uri: str, storage: StorageSpec | None) -> Any:
    """A seekable binary stream (local file, or an object read in ranges on demand)."""
    try:
        return st.storage_for(uri, storage).open(uri)
    except FileNotFoundError as exc:
        raise CorpusError(f"shard {uri}: file not found ({exc})") from exc
    except StorageError:
        raise
    except OSError as exc:
        raise CorpusError(f"shard {uri}: cannot open: {exc}") from exc


def _wanted(spec: CorpusSpec) -> list[str]:
    return list(dict.fromkeys(c for c in (spec.text_column, spec.id_column, spec.domain_column) if c))


def _iter_parquet(
    shard: ShardRef, spec: CorpusSpec, storage: StorageSpec | None, batch_rows: int
) -> Iterator[pa.Table]:
    try:
        with _open_input(shard.uri, storage) as fh:
            pfile = pq.ParquetFile(fh)
            available = pfile.schema_arrow.names
            wanted = _wanted(spec)
            for col in wanted:
                if col not in available:
                    raise CorpusError(
                        f"shard {shard.uri}: missing column {col!r}; available columns: {available}"
                    )
            empty = True
            for batch in pfile.iter_batches(batch_size=batch_rows, columns=wanted):
                empty = False
                yield pa.Table.from_batches([batch])
            if empty:
                yield pfile.schema_arrow.empty_table().select(wanted)
    except (CorpusError, StorageError):
        raise
    except (pa.ArrowException, OSError) as exc:
        raise CorpusError(f"shard {shard.uri}: corrupt or unreadable Parquet file: {exc}") from exc


def _text_stream(uri: str, raw: Any) -> Iterator[bytes]:
    """Lines of ``raw``, decompressing gzip or zstd (detected by magic bytes) as they stream."""
    buffered = raw if hasattr(raw, "peek") else io.BufferedReader(raw, buffer_size=1 << 20)
    head = buffered.peek(4)[:4]
    if head[:2] == _GZIP_MAGIC:
        return iter(gzip.GzipFile(fileobj=buffered))
    if head == _ZSTD_MAGIC:
        return _zstd_lines(uri, buffered)
    return iter(buffered)


def _zstd_lines(uri: str, fh: Any) -> Iterator[bytes]:
    """Lines of a (multi-frame) zstd stream; a truncated last frame is a CorpusError.

    Input is fed 8 KiB at a time, so the decompressed text held at once is about 8 KiB × the
    compression ratio plus one line.
    """
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    dobj = None
    rest = b""
    for chunk in iter(lambda: fh.read(1 << 13), b""):
        while chunk:
            dobj = dobj or dctx.decompressobj()
            try:
                rest += dobj.decompress(chunk)
            except zstandard.ZstdError as exc:
                raise CorpusError(f"shard {uri}: corrupt zstd stream: {exc}") from exc
            chunk = dobj.unused_data if dobj.eof else b""
            dobj = None if dobj.eof else dobj
        lines = rest.split(b"\n")
        rest = lines.pop()
        yield from lines
    if dobj is not None:
        raise CorpusError(f"shard {uri}: truncated zstd stream")
    if rest:
        yield rest


def _jsonl_columns(uri: str, wanted: list[str], lines: list[tuple[int, bytes]]) -> pa.Table:
    columns: dict[str, list[Any]] = {c: [] for c in wanted}
    for lineno, raw in lines:
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorpusError(f"shard {uri}: line {lineno}: invalid JSON: {exc}") from exc
        if not isinstance(record, dict):
            raise CorpusError(f"shard {uri}: line {lineno}: expected a JSON object")
        for col in wanted:
            if col not in record:
                raise CorpusError(
                    f"shard {uri}: line {lineno}: missing column {col!r}; "
                    f"available columns: {sorted(record)}"
                )
            columns[col].append(record[col])
    arrays = {}
    for col, values in columns.items():
        try:
            arrays[col] = pa.array(values) if values else pa.array([], pa.string())
        except (pa.ArrowException, TypeError, OverflowError) as exc:
            raise CorpusError(f"shard {uri}: column {col!r} has mixed/invalid values: {exc}") from exc
    return pa.table(arrays)


def _iter_jsonl(
    shard: ShardRef, spec: CorpusSpec, storage: StorageSpec | None, batch_rows: int
) -> Iterator[pa.Table]:
    wanted = _wanted(spec)
    with _open_input(shard.uri, storage) as raw:
        try:
            stream = _text_stream(shard.uri, raw)
            lines: list[tuple[int, bytes]] = []
            emitted = False
            for lineno, line in enumerate(stream, start=1):
                if line.strip():
                    lines.append((lineno, line))
                if len(lines) >= batch_rows:
                    yield _jsonl_columns(shard.uri, wanted, lines)
                    lines, emitted = [], True
        except CorpusError:
            raise
        except (OSError, EOFError, ValueError) as exc:  # gzip.BadGzipFile, zstd.ZstdError
            raise CorpusError(f"shard {shard.uri}: corrupt compressed stream: {exc}") from exc
        if lines or not emitted:
            yield _jsonl_columns(shard.uri, wanted, lines)


def _as_string(
    col: pa.ChunkedArray | pa.Array, name: str, uri: str, text: bool, offset: int = 0
) -> pa.Array:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_null(arr.type):
        arr = pa.array([None] * len(arr), pa.string())
    if arr.null_count:
        first = int(np.flatnonzero(~np.asarray(arr.is_valid()))[0])
        raise CorpusError(
            f"shard {uri}: column {name!r} has {arr.null_count} null values "
            f"(first at row {offset + first})"
        )
    ok_text = pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)
    if text and not ok_text:
        raise CorpusError(f"shard {uri}: text column {name!r} has type {arr.type}, expected string")
    if not (ok_text or pa.types.is_integer(arr.type)):
        raise CorpusError(f"shard {uri}: column {name!r} has type {arr.type}, expected string or int")
    return arr.cast(pa.string())


def _domain_for_path(uri: str, rules: dict[str, str]) -> str:
    for pattern, domain in rules.items():
        match = re.search(pattern, uri)
        if match:
            return match.expand(domain)
    raise CorpusError(f"shard {uri}: no domain_from_path rule matches (rules: {list(rules)})")


domain_for_path = _domain_for_path  # the domain a domain_from_path rule gives a shard URI (CorpusError if none)


def _normalise_batch(raw: pa.Table, shard: ShardRef, spec: CorpusSpec, offset: int) -> pa.Table:
    """String columns id/domain/text of one record batch starting at row ``offset`` of the shard."""
    n = raw.num_rows
    uri = shard.uri
    try:
        text = _as_string(raw.column(spec.text_column), spec.text_column, uri, True, offset)
        if spec.id_column:
            ids = _as_string(raw.column(spec.id_column), spec.id_column, uri, False, offset)
        else:
            ids = pa.array([f"{shard.shard_id}:{offset + i}" for i in range(n)], pa.string())
        if spec.domain_column:
            domain = _as_string(raw.column(spec.domain_column), spec.domain_column, uri, False, offset)
        else:
            domain = pa.array([_domain_for_path(uri, spec.domain_from_path)] * n, pa.string())
    except KeyError as exc:  # a column missing from the (empty) JSONL batch
        raise CorpusError(f"shard {uri}: missing column {exc}") from exc
    return pa.Table.from_arrays([ids, domain, text], schema=SHARD_SCHEMA)


def iter_shard_batches(
    shard: ShardRef, spec: CorpusSpec, storage: StorageSpec | None = None, batch_rows: int = BATCH_ROWS
) -> Iterator[pa.Table]:
    """Stream one shard as tables (at most ``batch_rows`` rows) with string columns id, domain, text.

    Validation (columns, types, nulls, ids unique across the whole shard) happens batch by batch;
    errors name the file. ``spec.domains`` filters rows after validation.
    """
    source = _iter_parquet if shard.format == "parquet" else _iter_jsonl
    seen: set[str] = set()
    offset = 0
    allowed = pa.array(spec.domains, pa.string()) if spec.domains is not None else None
    for raw in source(shard, spec, storage, batch_rows):
        table = _normalise_batch(raw, shard, spec, offset)
        check_shard_table(table, shard.uri, {"id": spec.id_column or "id", "text": spec.text_column,
                                             "domain": spec.domain_column or "domain_from_path"})
        offset += raw.num_rows
        ids = table.column("id").to_pylist()
        if len(set(ids)) != len(ids) or not seen.isdisjoint(ids):
            dup = _first_duplicate(ids, seen)
            raise CorpusError(f"shard {shard.uri}: duplicate id {dup!r} in column {spec.id_column!r}")
        seen.update(ids)
        if allowed is not None:
            table = table.filter(pc.is_in(table.column("domain"), allowed))
        yield table


def _first_duplicate(ids: list[str], seen: set[str]) -> str:
    """The first id of this batch that repeats an earlier one (slow path, on error only)."""
    local: set[str] = set()
    for value in ids:
        if value in seen or value in local:
            return value
        local.add(value)
    raise AssertionError("no duplicate")


def example_hash(ids: pa.Array | pa.ChunkedArray | list[str], seed: int) -> np.ndarray:
    """Stable uint64 hash of ``(seed, id)`` for each id (blake2b; platform independent)."""
    values = ids.to_pylist() if isinstance(ids, (pa.Array, pa.ChunkedArray)) else list(ids)
    prefix = f"{int(seed)}\x00".encode()
    out = np.empty(len(values), dtype=np.uint64)
    for i, value in enumerate(values):
        digest = hashlib.blake2b(prefix + str(value).encode("utf-8"), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "little")
    return out


def sample_rows(table: pa.Table, spec: SamplingSpec) -> pa.Table:
    """Keep rows whose hash of ``(seed, id)`` falls below ``rate``, then drop short texts.

    The decision depends on the id only, so sampling shards separately selects the same rows as
    sampling the whole corpus. ``max_per_domain`` is not applied here (see cap_per_domain).
    """
    mask = np.ones(table.num_rows, dtype=bool)
    if spec.rate < 1.0:
        threshold = np.uint64(min(int(spec.rate * 2.0**64), 2**64 - 1))
        mask &= example_hash(table.column("id"), spec.seed) < threshold
    if spec.min_chars > 0:
        lengths = pc.utf8_length(table.column("text")).to_numpy(zero_copy_only=False)
        mask &= lengths >= spec.min_chars
    return table.filter(pa.array(mask))


def cap_per_domain(table: pa.Table, n: int, seed: int) -> pa.Table:
    """Keep, per domain, the ``n`` rows with the smallest ``(seed, id)`` hash (original order).

    Applied to the union of shards this equals applying it to the unsharded corpus.
    """
    if n < 0:
        raise CorpusError(f"cap_per_domain: n must be >= 0, got {n}")
    if table.num_rows == 0:
        return table
    hashes = example_hash(table.column("id"), seed)
    domains = np.asarray(table.column("domain").to_pylist(), dtype=object)
    ids = np.asarray(table.column("id").to_pylist(), dtype=object)
    keep = np.zeros(table.num_rows, dtype=bool)
    for dom in sorted(set(domains.tolist())):
        rows = np.flatnonzero(domains == dom)
        if len(rows) <= n:
            keep[rows] = True
            continue
        order = sorted(rows.tolist(), key=lambda r: (int(hashes[r]), str(ids[r])))
        keep[order[:n]] = True
    return table.filter(pa.array(keep))


class DomainCap:
    """Streaming :func:`cap_per_domain`: feed record batches in shard order, then take the result.

    Keeps at most ``n`` rows per domain (O(n · domains) memory); the result equals
    ``cap_per_domain(concat(batches), n, seed)`` because the top-n of a union is the top-n of
    (top-n of the prefix ∪ the next batch), and kept rows stay in original order.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self.kept = SHARD_SCHEMA.empty_table()

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            merged = pa.concat_tables([self.kept, table.select(SHARD_SCHEMA.names)])
            self.kept = cap_per_domain(merged, self.n, self.seed).combine_chunks()

    def result(self) -> pa.Table:
        return self.kept
