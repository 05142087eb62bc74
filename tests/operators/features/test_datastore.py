"""Feature shards, npz sums and completion records on local disk and S3 (moto server)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from operators.features import datastore as ds
from operators.io import storage as st
from operators.errors import CorpusError
from tests.fixtures.readers import read_features
from workflows.jobs.aggregate_shard import iter_feature_batches, iter_shard_feature_batches

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["local", "s3"])
def run_root(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "local":
        return None, str(tmp_path / "run")
    spec, bucket = request.getfixturevalue("s3_storage")
    return spec, st.join(bucket, "runs", "r1")


def _table(n: int = 11, dim: int = 6, seed: int = 0) -> tuple[pa.Table, np.ndarray]:
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n, dim)).astype(np.float32)
    feats[0, 0] = np.float32(-0.0)
    feats[1, 1] = np.finfo(np.float32).tiny / 2  # subnormal survives bitwise
    table = ds.features_table(
        [f"id-{i}" for i in range(n)], [f"d{i % 3}" for i in range(n)],
        rng.integers(2, 64, size=n), rng.random(n), feats, "fp-abc",
    )
    return table, feats


def test_schema_and_table_construction() -> None:
    table, feats = _table()
    schema = ds.feature_schema(6, "fp-abc")
    assert table.schema.equals(schema, check_metadata=True)
    assert schema.field("features").type == pa.list_(pa.float32(), 6)
    assert schema.metadata[b"feature_dim"] == b"6" and ds.projector_fingerprint(table) == "fp-abc"
    out = ds.features_to_numpy(table)
    assert out.dtype == np.float32 and np.array_equal(out.view(np.uint32), feats.view(np.uint32))
    assert np.array_equal(ds.features_to_numpy(table.slice(3, 4)), feats[3:7])
    empty = ds.empty_features_table(6, "fp")
    assert empty.num_rows == 0 and ds.features_to_numpy(empty).shape == (0, 6)
    with pytest.raises(CorpusError, match="ids"):
        ds.features_table(["a"], ["d", "d"], [1, 1], [0.0, 0.0], feats[:2], "fp")


def test_layout_uris() -> None:
    assert ds.feature_uri("s3://b/run", "s-1") == "s3://b/run/features/s-1"
    assert ds.feature_part_uri("s3://b/run", "s-1", 3) == "s3://b/run/features/s-1/part-00003.parquet"
    assert ds.legacy_feature_uri("s3://b/run", "s-1") == "s3://b/run/features/s-1.parquet"
    assert ds.kfac_uri("s3://b/run/", "s-1") == "s3://b/run/kfac/s-1.npz"
    assert ds.completion_uri("/tmp/run", "s-1") == "/tmp/run/_done/s-1.json"


def test_feature_shard_roundtrip_bitwise(run_root) -> None:
    spec, root = run_root
    table, feats = _table()
    uri = ds.legacy_feature_uri(root, "shard-a")  # a single file still reads as a shard
    ds.write_feature_shard(uri, table, spec)
    back = read_features(uri, spec)
    assert back.equals(table)
    assert ds.projector_fingerprint(back) == "fp-abc" and ds.feature_dim(back) == 6
    assert np.array_equal(ds.features_to_numpy(back).view(np.uint32), feats.view(np.uint32))
    empty_uri = ds.feature_part_uri(root, "shard-empty", 0)
    ds.write_feature_shard(empty_uri, ds.empty_features_table(6, "fp-abc"), spec)
    assert read_features(empty_uri, spec).num_rows == 0


def test_corrupt_feature_shard_and_npz(run_root) -> None:
    spec, root = run_root
    table, _ = _table()
    uri = ds.feature_part_uri(root, "bad", 0)
    ds.write_feature_shard(uri, table, spec)
    st.write_bytes_atomic(uri, st.read_bytes(uri, spec)[:100], spec)
    with pytest.raises(CorpusError, match="part-00000.parquet"):  # the aggregation's reader names the part
        list(iter_shard_feature_batches(root, "bad", spec, ["features"]))
    arrays = {"A": np.arange(12, dtype=np.float64).reshape(3, 4), "count": np.array(7)}
    k = ds.kfac_uri(root, "bad")
    ds.write_npz_atomic(k, arrays, spec)
    got = ds.read_npz(k, spec)
    assert set(got) == {"A", "count"} and np.array_equal(got["A"], arrays["A"]) and int(got["count"]) == 7
    st.write_bytes_atomic(k, b"PK\x03\x04garbage", spec)
    with pytest.raises(CorpusError, match="bad.npz"):
        ds.read_npz(k, spec)


def _record(shard_id: str, n: int = 5) -> ds.CompletionRecord:
    return ds.CompletionRecord(
        shard_id=shard_id, source_uri=f"s3://corpus/{shard_id}.parquet", role="corpus",
        output_uri=f"features/{shard_id}.parquet", n_examples=n, n_tokens=10 * n,
        domain_counts={"a": n}, domain_tokens={"a": 10 * n}, feature_dim=6,
        projector_fingerprint="fp-abc", worker="w0", attempt=1,
        started_at="2026-01-01T00:00:00+00:00", finished_at="2026-01-01T00:00:02+00:00",
        duration_s=2.0,
    )


def test_completion_records(run_root, caplog: pytest.LogCaptureFixture) -> None:
    spec, root = run_root
    assert ds.list_completions(root, spec) == {}
    assert ds.read_completion(root, "s1", spec) is None
    for i, sid in enumerate(["s2", "s1", "s3"]):
        assert ds.write_completion(root, _record(sid, n=i + 1), spec) == ds.completion_uri(root, sid)
    assert ds.read_completion(root, "s1", spec) == _record("s1", n=2)
    st.write_bytes_atomic(ds.completion_uri(root, "s4"), b'{"shard_id": "s4"', spec)  # torn
    st.write_json_atomic(ds.completion_uri(root, "s5"), _record("other").model_dump(), spec)
    with caplog.at_level(logging.WARNING, logger="operators.features.datastore"):
        done = ds.list_completions(root, spec)
    assert list(done) == ["s1", "s2", "s3"]
    assert done["s3"] == _record("s3", n=3)
    assert "s4.json" in caplog.text and "s5.json" in caplog.text
    with pytest.raises(CorpusError, match="s4.json"):
        ds.read_completion(root, "s4", spec)


def test_part_writer_splits_by_rows_and_record_lists_parts(run_root) -> None:
    spec, root = run_root
    table, feats = _table()
    n = table.num_rows
    ids, doms = table.column("id").to_pylist(), table.column("domain").to_pylist()
    ntok, loss = table.column("n_tokens").to_numpy(), table.column("loss").to_numpy()
    st.write_bytes_atomic(ds.feature_part_uri(root, "s", 7), b"stale part of an earlier attempt", spec)
    writer = ds.FeaturePartWriter(root, "s", 6, "fp-abc", part_rows=2, storage=spec)
    for start in range(0, n, 3):  # batches that do not line up with parts
        sl = slice(start, start + 3)
        writer.add(ids[sl], doms[sl], ntok[sl], loss[sl], feats[sl])
    parts = writer.close()
    assert [r for _, r in parts] == [2] * (n // 2) + ([n % 2] if n % 2 else [])
    assert [u.rsplit("/", 1)[-1] for u, _ in parts] == [f"part-{i:05d}.parquet" for i in range(len(parts))]
    assert len(st.list_files(ds.feature_uri(root, "s"), (".parquet",), spec)) == len(parts)  # stale gone
    # before the completion record: the folder listing; after: exactly the record's parts
    assert read_features(ds.feature_uri(root, "s"), spec).equals(table)
    ds.write_completion(root, _record("s").model_copy(update={
        "parts": [u for u, _ in parts], "part_rows": [r for _, r in parts],
        "output_uri": ds.feature_uri(root, "s")}), spec)
    got = list(iter_shard_feature_batches(root, "s", spec, table.column_names))
    assert [b.num_rows for b in got] == [r for _, r in parts]
    assert pa.Table.from_batches(got).equals(table)
    # an empty shard still has one (empty) part with the schema
    empty = ds.FeaturePartWriter(root, "e", 6, "fp-abc", part_rows=2, storage=spec).close()
    assert [r for _, r in empty] == [0]
    assert ds.feature_dim(read_features(ds.feature_uri(root, "e"), spec)) == 6
    assert not list(iter_feature_batches(ds.feature_part_uri(root, "e", 0), spec, ["features"]))
    # legacy single-file shards of older runs
    ds.write_feature_shard(ds.legacy_feature_uri(root, "old"), table, spec)
    old = iter_shard_feature_batches(root, "old", spec, table.column_names)
    assert pa.Table.from_batches(list(old)).equals(table)
    assert ds.part_rows_for(1024) == ds.PART_BYTES // 4096 and ds.part_rows_for(1024, 10) == 10


def test_estimated_tokens_available() -> None:
    base = _record("a")
    old = base.model_copy(update={"domain_tokens": {"a": 50, "c": 7}})  # an older record: no new fields
    new = base.model_copy(update={
        "domain_rows_all": {"a": 10, "b": 4}, "domain_bytes_all": {"a": 1000, "b": 400},
        "domain_tokens_untruncated": {"a": 30, "b": 0}, "domain_bytes_featurized": {"a": 100, "b": 0}})
    assert ds.CompletionRecord.model_validate_json(old.model_dump_json()).domain_bytes_all == {}
    est = ds.estimated_tokens_available([old, new])
    assert est == {"a": 50 + 300, "b": 0, "c": 7}
    target = new.model_copy(update={"role": "target"})
    assert ds.estimated_tokens_available({"x": target}) == {}


def test_parts_check_themselves(run_root) -> None:
    """The record lists each part's size and sha256; a short part fails the size check, a part with other
    bytes of the same size fails the checksum when read; both name the part and survive pickling (Ray)."""
    import pickle

    spec, root = run_root
    table, feats = _table()
    writer = ds.FeaturePartWriter(root, "s", 6, "fp-abc", part_rows=4, storage=spec)
    writer.add(table.column("id").to_pylist(), table.column("domain").to_pylist(),
               table.column("n_tokens").to_numpy(), table.column("loss").to_numpy(), feats)
    parts = writer.close()
    digests = writer.digests
    assert len(digests) == len(parts) == 3
    for (uri, _), (size, digest) in zip(parts, digests):
        data = st.read_bytes(uri, spec)
        assert len(data) == size and hashlib.sha256(data).hexdigest() == digest
    record = _record("s").model_copy(update={
        "parts": [u for u, _ in parts], "part_rows": [r for _, r in parts], "output_uri": ds.feature_uri(root, "s"),
        "part_bytes": [n for n, _ in digests], "part_sha256": [h for _, h in digests]})
    ds.write_completion(root, record, spec)
    assert ds.read_completions({"s": root, "missing": root}, spec) == {"s": record}
    assert ds.check_part_sizes(record, spec) is None and ds.verify_shard(root, record, spec) == []
    assert pa.Table.from_batches(list(iter_shard_feature_batches(root, "s", spec, table.column_names))).equals(table)

    first, second = parts[0][0], parts[1][0]
    good = st.read_bytes(second, spec)
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF
    st.write_bytes_atomic(second, bytes(flipped), spec)
    assert ds.check_part_sizes(record, spec) is None  # same size: only the checksum can tell
    with pytest.raises(ds.FeaturePartCorrupt, match="sha256") as err:
        list(iter_shard_feature_batches(root, "s", spec, ["features"]))
    assert err.value.part_uri == second and err.value.shard_id == "s"
    again = pickle.loads(pickle.dumps(err.value))
    assert (again.part_uri, again.shard_id, str(again)) == (second, "s", str(err.value))

    st.write_bytes_atomic(first, st.read_bytes(first, spec)[:50], spec)
    bad = ds.check_part_sizes(record, spec)
    assert bad is not None and bad.part_uri == first and "50 bytes" in bad.reason
    assert [b.part_uri for b in ds.verify_shard(root, record, spec)] == [first]
    st.delete(first, spec)
    assert ds.check_part_sizes(record, spec).reason == "not found"
    ds.invalidate(root, "s", spec)
    assert ds.read_completion(root, "s", spec) is None
