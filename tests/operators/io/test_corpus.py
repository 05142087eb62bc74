"""Corpus discovery, shard reading (Parquet/JSONL, local and S3), errors, and sampling."""

from __future__ import annotations

import gzip
import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.io import storage as st
from operators.io.corpus import (
    SHARD_SCHEMA,
    CorpusSpec,
    SamplingSpec,
    ShardRef,
    DomainCap,
    cap_per_domain,
    discover_shards,
    iter_shard_batches,
    sample_rows,
    shard_id_for,
)
from operators.errors import CorpusError
from tests.fixtures.readers import read_shard

pytestmark = pytest.mark.timeout(60)


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _rows(prefix: str, domain: str, n: int) -> list[dict]:
    return [{"id": f"{prefix}-{i}", "domain": domain, "text": f"{domain} text {i} " * (i % 4 + 1)}
            for i in range(n)]


@pytest.fixture(params=["local", "s3"])
def corpus_root(request: pytest.FixtureRequest, tmp_path: Path):
    """(storage spec, root URI) holding 2 parquet shards, 1 jsonl and 1 jsonl.gz shard."""
    if request.param == "local":
        spec, root = None, str(tmp_path / "corpus")
    else:
        spec, bucket = request.getfixturevalue("s3_storage")
        root = st.join(bucket, "corpus")
    files = {
        ("code", "code-0000.parquet"): _parquet_bytes(pa.Table.from_pylist(_rows("c0", "code", 5))),
        ("code", "code-0001.parquet"): _parquet_bytes(pa.Table.from_pylist(_rows("c1", "code", 4))),
        ("web", "web-0000.jsonl"): _jsonl_bytes(_rows("w0", "web", 6)),
        ("web", "web-0001.jsonl.gz"): gzip.compress(_jsonl_bytes(_rows("w1", "web", 3))),
        ("web", "_SUCCESS"): b"",
        ("web", "README.txt"): b"not a shard",
    }
    for parts, data in files.items():
        st.write_bytes_atomic(st.join(root, *parts), data, spec)
    return spec, root


def test_discover_and_read_all_formats(corpus_root) -> None:
    spec, root = corpus_root
    corpus = CorpusSpec(paths=[root, st.join(root, "code", "*.parquet")])  # overlap deduplicated
    shards = discover_shards(corpus, spec)
    assert [s.uri.rsplit("/", 1)[-1] for s in shards] == [
        "code-0000.parquet", "code-0001.parquet", "web-0000.jsonl", "web-0001.jsonl.gz",
    ]
    assert [s.format for s in shards] == ["parquet", "parquet", "jsonl", "jsonl"]
    assert len({s.shard_id for s in shards}) == 4
    assert shards[0].shard_id.startswith("code-0000-") and shards[0].shard_id == shard_id_for(shards[0].uri)
    assert all(s.size_bytes and s.size_bytes > 0 for s in shards)
    total = 0
    for shard, (prefix, domain, n) in zip(shards, [("c0", "code", 5), ("c1", "code", 4),
                                                   ("w0", "web", 6), ("w1", "web", 3)]):
        table = read_shard(shard, corpus, spec)
        assert table.schema == SHARD_SCHEMA
        assert table.column("id").to_pylist() == [r["id"] for r in _rows(prefix, domain, n)]
        assert set(table.column("domain").to_pylist()) == {domain}
        assert table.column("text").to_pylist() == [r["text"] for r in _rows(prefix, domain, n)]
        total += table.num_rows
    assert total == 18


def test_domain_filter_and_path_rules(corpus_root) -> None:
    spec, root = corpus_root
    only_web = CorpusSpec(paths=[root], domains=["web"])
    rows = sum(read_shard(s, only_web, spec).num_rows for s in discover_shards(only_web, spec))
    assert rows == 9
    by_path = CorpusSpec(paths=[root], id_column=None, domain_column=None,
                         domain_from_path={r"/(code)/": r"src-\1", r"web-": "the-web"})
    shards = discover_shards(by_path, spec)
    first = read_shard(shards[0], by_path, spec)
    assert set(first.column("domain").to_pylist()) == {"src-code"}
    assert first.column("id").to_pylist() == [f"{shards[0].shard_id}:{i}" for i in range(5)]
    assert set(read_shard(shards[2], by_path, spec).column("domain").to_pylist()) == {"the-web"}
    no_match = CorpusSpec(paths=[root], domain_column=None, domain_from_path={"nomatch": "x"})
    with pytest.raises(CorpusError, match="code-0000.parquet"):
        read_shard(shards[0], no_match, spec)


def test_discover_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="missing-dir"):
        discover_shards(CorpusSpec(paths=[str(tmp_path / "missing-dir")]))
    (tmp_path / "only.txt").write_text("x")
    with pytest.raises(CorpusError, match=r"\*\.txt"):
        discover_shards(CorpusSpec(paths=[str(tmp_path / "*.txt")]))
    explicit = discover_shards(CorpusSpec(paths=[str(tmp_path / "only.txt")], format="jsonl"))
    assert [s.format for s in explicit] == ["jsonl"]
    with pytest.raises(ValueError, match="domain_from_path"):
        CorpusSpec(paths=["x"], domain_column=None)


def _ref(path: Path, fmt: str) -> ShardRef:
    return ShardRef(uri=str(path), format=fmt, shard_id=shard_id_for(str(path)))


def test_missing_column_names_column_file_and_available(tmp_path: Path) -> None:
    pq_path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"id": ["1"], "body": ["t"], "domain": ["d"]}), pq_path)
    with pytest.raises(CorpusError) as info:
        read_shard(_ref(pq_path, "parquet"), CorpusSpec(paths=[str(pq_path)]))
    msg = str(info.value)
    assert "'text'" in msg and "a.parquet" in msg and "body" in msg
    jl = tmp_path / "b.jsonl"
    jl.write_bytes(_jsonl_bytes([{"id": "1", "text": "t", "domain": "d"}, {"id": "2", "text": "u"}]))
    with pytest.raises(CorpusError, match=r"b\.jsonl.*line 2.*'domain'"):
        read_shard(_ref(jl, "jsonl"), CorpusSpec(paths=[str(jl)]))


def test_corrupt_parquet_and_jsonl(tmp_path: Path, s3_storage) -> None:
    good = _parquet_bytes(pa.Table.from_pylist(_rows("x", "d", 20)))
    bad = tmp_path / "trunc.parquet"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(CorpusError, match="trunc.parquet"):
        read_shard(_ref(bad, "parquet"), CorpusSpec(paths=[str(bad)]))
    spec, bucket = s3_storage
    remote = st.join(bucket, "trunc.parquet")
    st.write_bytes_atomic(remote, good[:-10], spec)
    ref = ShardRef(uri=remote, format="parquet", shard_id="t")
    with pytest.raises(CorpusError, match=remote):
        read_shard(ref, CorpusSpec(paths=[remote]), spec)
    jl = tmp_path / "c.jsonl"
    lines = [json.dumps(r) for r in _rows("x", "d", 2)] + ['{"id": "3", "text": ']
    jl.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=r"c\.jsonl: line 3"):
        read_shard(_ref(jl, "jsonl"), CorpusSpec(paths=[str(jl)]))


def test_null_text_and_duplicate_ids(tmp_path: Path) -> None:
    nulls = tmp_path / "n.parquet"
    pq.write_table(pa.table({"id": ["1", "2"], "domain": ["d", "d"], "text": ["ok", None]}), nulls)
    with pytest.raises(CorpusError, match=r"n\.parquet.*'text'.*null"):
        read_shard(_ref(nulls, "parquet"), CorpusSpec(paths=[str(nulls)]))
    dups = tmp_path / "dup.jsonl"
    dups.write_bytes(_jsonl_bytes([{"id": 7, "domain": "d", "text": "a"},
                                   {"id": 8, "domain": "d", "text": "b"},
                                   {"id": 7, "domain": "d", "text": "c"}]))
    with pytest.raises(CorpusError, match=r"dup\.jsonl.*duplicate id '7'"):
        read_shard(_ref(dups, "jsonl"), CorpusSpec(paths=[str(dups)]))


def _big_table(n: int) -> pa.Table:
    rng = np.random.default_rng(1)
    domains = rng.choice(["a", "b", "c"], size=n).tolist()
    texts = ["x" * int(k) for k in rng.integers(0, 30, size=n)]
    return pa.table({"id": [f"doc-{i}" for i in range(n)], "domain": domains, "text": texts},
                    schema=SHARD_SCHEMA)


def test_sampling_is_shard_independent() -> None:
    table = _big_table(3000)
    spec = SamplingSpec(rate=0.3, seed=5, min_chars=3)
    whole = sample_rows(table, spec)
    parts = [sample_rows(table.slice(a, b - a), spec) for a, b in [(0, 700), (700, 2100), (2100, 3000)]]
    union = pa.concat_tables(parts)
    assert union.equals(whole)
    # selection rate ~ Bernoulli(0.3) among rows with >= 3 chars (5-sigma band)
    eligible = sum(len(t) >= 3 for t in table.column("text").to_pylist())
    sd = math.sqrt(eligible * 0.3 * 0.7)
    assert abs(whole.num_rows - 0.3 * eligible) < 5 * sd
    assert min(len(t) for t in whole.column("text").to_pylist()) >= 3
    other = sample_rows(table, SamplingSpec(rate=0.3, seed=6, min_chars=3))
    assert set(other.column("id").to_pylist()) != set(whole.column("id").to_pylist())
    smaller = sample_rows(table, SamplingSpec(rate=0.1, seed=5, min_chars=3))
    assert set(smaller.column("id").to_pylist()) <= set(whole.column("id").to_pylist())
    assert sample_rows(table, SamplingSpec(min_chars=0)).equals(table)


def test_cap_per_domain_global_equals_unsharded() -> None:
    table = _big_table(900)
    capped = cap_per_domain(table, 50, seed=3)
    counts = {d: capped.column("domain").to_pylist().count(d) for d in "abc"}
    assert counts == {"a": 50, "b": 50, "c": 50}
    shards = [table.slice(0, 300), table.slice(300, 300), table.slice(600, 300)]
    # per-shard pre-cap then global cap on the union: same selection as capping the whole
    union = pa.concat_tables([cap_per_domain(s, 50, seed=3) for s in shards])
    assert cap_per_domain(union, 50, seed=3).equals(capped)
    big = cap_per_domain(table, 10_000, seed=3)
    assert big.equals(table)
    assert cap_per_domain(table, 50, seed=4).column("id").to_pylist() != capped.column("id").to_pylist()


def _zst(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_streaming_reads_record_batches(tmp_path: Path, suffix: str) -> None:
    rows = _rows("s", "web", 23)
    path = tmp_path / f"shard{suffix}"
    data = {".parquet": lambda: _parquet_bytes(pa.Table.from_pylist(rows)),
            ".jsonl": lambda: _jsonl_bytes(rows),
            ".jsonl.gz": lambda: gzip.compress(_jsonl_bytes(rows)),
            ".jsonl.zst": lambda: _zst(_jsonl_bytes(rows))}
    path.write_bytes(data[suffix]())
    spec = CorpusSpec(paths=[str(tmp_path)])
    (ref,) = discover_shards(spec)
    batches = list(iter_shard_batches(ref, spec, batch_rows=5))
    assert [b.num_rows for b in batches] == [5, 5, 5, 5, 3]
    whole = pa.concat_tables(batches)
    assert whole.equals(read_shard(ref, spec)) and whole.column("id").to_pylist() == [r["id"] for r in rows]


def test_streaming_errors_name_the_file(tmp_path: Path) -> None:
    rows = _rows("s", "web", 12)
    dup = tmp_path / "dup.jsonl.zst"
    dup.write_bytes(_zst(_jsonl_bytes(rows + [rows[1]])))  # duplicate across record batches
    with pytest.raises(CorpusError, match=r"dup.jsonl.zst: duplicate id 's-1'"):
        list(iter_shard_batches(_ref(dup, "jsonl"), CorpusSpec(paths=[str(dup)]), batch_rows=4))
    bad = tmp_path / "bad.jsonl.zst"
    bad.write_bytes(_zst(_jsonl_bytes(rows))[:-9])
    with pytest.raises(CorpusError, match="bad.jsonl.zst"):
        list(iter_shard_batches(_ref(bad, "jsonl"), CorpusSpec(paths=[str(bad)]), batch_rows=4))
    nulls = tmp_path / "nulls.jsonl"
    nulls.write_bytes(_jsonl_bytes(rows[:6] + [{"id": "n", "domain": "web", "text": None}]))
    with pytest.raises(CorpusError, match=r"nulls.jsonl: column 'text' has 1 null values \(first at row 6\)"):
        list(iter_shard_batches(_ref(nulls, "jsonl"), CorpusSpec(paths=[str(nulls)]), batch_rows=4))


def test_domain_cap_streaming_equals_whole_table() -> None:
    table = pa.Table.from_pylist(_rows("a", "x", 40) + _rows("b", "y", 7) + _rows("c", "x", 30),
                                 schema=SHARD_SCHEMA)
    cap = DomainCap(9, seed=3)
    for start in range(0, table.num_rows, 8):
        cap.add(table.slice(start, 8))
    assert cap.result().equals(cap_per_domain(table, 9, 3))


def test_streaming_memory_is_bounded_by_the_batch(tmp_path: Path) -> None:
    """A ~27 MB (uncompressed) .jsonl.zst shard streams with a peak far below its size."""
    import tracemalloc

    import zstandard

    rng = np.random.default_rng(0)
    words = np.array([f"w{i}" for i in range(5000)])
    rows = ({"id": f"r{i}", "domain": "web", "text": " ".join(rng.choice(words, 250))} for i in range(20000))

    raw = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path = tmp_path / "big.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(raw))
    size = len(raw)
    del raw
    spec = CorpusSpec(paths=[str(path)])
    tracemalloc.start()
    arrow_peak, n = 0, 0
    try:
        for batch in iter_shard_batches(_ref(path, "jsonl"), spec, batch_rows=500):
            n += batch.num_rows
            arrow_peak = max(arrow_peak, pa.total_allocated_bytes())
        _, py_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 20000 and size > 20e6
    print(f"streamed {size / 1e6:.1f} MB: python peak {py_peak / 1e6:.1f} MB, arrow peak {arrow_peak / 1e6:.1f} MB")
    assert py_peak + arrow_peak < size / 4, (py_peak, arrow_peak, size)
