"""Storage layer on a local directory and on a real S3 API (moto server)."""

from __future__ import annotations

import os
import time

import pytest

from operators.io import storage as st
from operators.errors import StorageError
from operators.io.storage import StorageSpec
from tests.fixtures.concurrency import race
from tests.fixtures.s3 import free_port

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["local", "s3"])
def where(request: pytest.FixtureRequest, tmp_path) -> tuple[StorageSpec | None, str]:
    """(spec, root URI) on a local temp dir or a fresh S3 bucket."""
    if request.param == "local":
        return None, str(tmp_path / "root")
    return request.getfixturevalue("s3_storage")


def test_write_read_exists_roundtrip(where) -> None:
    spec, root = where
    uri = st.join(root, "a", "b", "blob.bin")
    assert not st.exists(uri, spec)
    payload = bytes(range(256)) * 3
    st.write_bytes_atomic(uri, payload, spec)
    assert st.exists(uri, spec)
    assert st.read_bytes(uri, spec) == payload
    st.write_bytes_atomic(uri, b"new", spec)  # overwrite replaces the whole content
    assert st.read_bytes(uri, spec) == b"new"

    st.write_text_atomic(st.join(root, "t.txt"), "héllo", spec)
    assert st.read_text(st.join(root, "t.txt"), spec) == "héllo"
    obj = {"z": 1, "a": [1, 2], "m": {"y": None}}
    st.write_json_atomic(st.join(root, "o.json"), obj, spec)
    assert st.read_json(st.join(root, "o.json"), spec) == obj
    text = st.read_text(st.join(root, "o.json"), spec)
    assert text.index('"a"') < text.index('"m"') < text.index('"z"')  # sorted keys


def test_list_recursive_suffix_and_glob(where) -> None:
    spec, root = where
    names = ["d1/x.parquet", "d1/y.jsonl", "d2/sub/z.parquet", "top.parquet", "d2/notes.txt"]
    for name in names:
        st.write_bytes_atomic(st.join(root, *name.split("/")), name.encode(), spec)
    listed = st.list_files(root, None, spec)
    assert listed == sorted(st.join(root, *n.split("/")) for n in names)
    assert all(u.startswith("s3://") for u in listed) == st.is_remote(root)
    assert st.list_files(root, (".parquet",), spec) == sorted(
        st.join(root, *n.split("/")) for n in names if n.endswith(".parquet")
    )
    assert st.list_files(st.join(root, "d1", "*.jsonl"), None, spec) == [st.join(root, "d1", "y.jsonl")]
    assert st.list_files(st.join(root, "d*", "**", "*.parquet"), None, spec) == sorted(
        [st.join(root, "d1", "x.parquet"), st.join(root, "d2", "sub", "z.parquet")]
    )
    single = st.join(root, "top.parquet")
    assert st.list_files(single, None, spec) == [single]
    infos = dict(st.list_file_infos(single, None, spec))
    assert infos[single] == len(b"top.parquet")
    assert st.list_files(st.join(root, "nothing-here"), None, spec) == []


def test_put_if_absent_and_delete(where) -> None:
    spec, root = where
    uri = st.join(root, "locks", "claim.json")
    assert st.put_if_absent(uri, b"first", spec) is True
    assert st.put_if_absent(uri, b"second", spec) is False
    assert st.read_bytes(uri, spec) == b"first"
    st.delete(uri, spec)
    assert not st.exists(uri, spec)
    st.delete(uri, spec)  # missing is fine
    assert st.put_if_absent(uri, b"third", spec) is True
    assert st.read_bytes(uri, spec) == b"third"


def test_missing_file_error_names_uri(where) -> None:
    spec, root = where
    uri = st.join(root, "absent.bin")
    with pytest.raises(StorageError, match="absent.bin") as info:
        st.read_bytes(uri, spec)
    assert isinstance(info.value, FileNotFoundError)


def test_local_put_if_absent_race_has_one_winner(tmp_path) -> None:
    uri = str(tmp_path / "race.txt")
    results = race(lambda i: st.put_if_absent(uri, f"worker-{i}".encode()), 8)
    assert sorted(results) == [False] * 7 + [True]
    assert st.read_text(uri).startswith("worker-")
    assert [p.name for p in tmp_path.iterdir()] == ["race.txt"]  # no temp files left


def test_local_failed_atomic_write_keeps_old_content(tmp_path, monkeypatch) -> None:
    uri = str(tmp_path / "d" / "f.bin")
    st.write_bytes_atomic(uri, b"old")

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(StorageError, match="f.bin"):
        st.write_bytes_atomic(uri, b"new-content")
    monkeypatch.undo()
    assert st.read_bytes(uri) == b"old"
    assert os.listdir(tmp_path / "d") == ["f.bin"]
    # temp files of in-flight writes are never listed
    (tmp_path / "d" / ".f.bin.tmp-x").write_bytes(b"partial")
    assert st.list_files(str(tmp_path / "d")) == [uri]


def test_join_and_is_remote() -> None:
    assert st.join("s3://b/root/", "features", "/x.parquet") == "s3://b/root/features/x.parquet"
    assert st.is_remote("s3://b/k") and not st.is_remote("/tmp/x")
    fs, path = st.filesystem_for("relative/dir")
    assert os.path.isabs(path) and path.endswith("relative/dir")
    with pytest.raises(StorageError, match="gs://b/x"):
        st.filesystem_for("gs://b/x")


def test_check_reachable_ok_and_missing_bucket(s3_storage) -> None:
    spec, bucket_uri = s3_storage
    st.check_reachable(st.join(bucket_uri, "run"), spec)
    missing = "s3://influmix-no-such-bucket/run"
    with pytest.raises(StorageError, match="influmix-no-such-bucket") as info:
        st.check_reachable(missing, spec)
    assert spec.endpoint_url in str(info.value)


@pytest.mark.usefixtures("s3_server")
def test_unreachable_endpoint_fails_fast_naming_endpoint() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    spec = StorageSpec(endpoint_url=endpoint, retries=1, connect_timeout_s=1.0)
    start = time.monotonic()
    with pytest.raises(StorageError, match=endpoint.replace(".", r"\.")):
        st.check_reachable("s3://some-bucket/run", spec)
    with pytest.raises(StorageError, match=endpoint.replace(".", r"\.")):
        st.read_bytes("s3://some-bucket/run/x.json", spec)
    assert time.monotonic() - start < 20.0


def test_read_many_reports_missing_per_uri(where) -> None:
    spec, root = where
    present = st.join(root, "p.json")
    st.write_bytes_atomic(present, b"{}", spec)
    absent = st.join(root, "q.json")
    got = st.read_many([present, absent], spec)
    assert got[present] == b"{}"
    assert isinstance(got[absent], StorageError) and "q.json" in str(got[absent])


def test_conditional_update_and_delete(where) -> None:
    spec, root = where
    uri = st.join(root, "ptr.json")
    assert st.read_versioned(uri, spec) is None
    assert st.put_if_match(uri, b"x", "nope", spec) is False  # nothing to match
    assert st.put_if_absent(uri, b"v1", spec)
    data, v1 = st.read_versioned(uri, spec)
    assert data == b"v1"
    assert st.put_if_match(uri, b"v2", v1, spec) is True
    assert st.put_if_match(uri, b"v3", v1, spec) is False  # stale version: refused, content kept
    data, v2 = st.read_versioned(uri, spec)
    assert data == b"v2" and v2 != v1
    assert st.delete_if_match(uri, v1, spec) is False
    assert st.read_bytes(uri, spec) == b"v2"
    assert st.delete_if_match(uri, v2, spec) is True
    assert not st.exists(uri, spec)
    assert st.list_files(root, None, spec) == []  # lock files are hidden


def test_conditional_update_race_has_one_winner(where) -> None:
    spec, root = where
    uri = st.join(root, "race.json")
    st.put_if_absent(uri, b"base", spec)
    _, version = st.read_versioned(uri, spec)
    results = race(lambda i: st.put_if_match(uri, f"w{i}".encode(), version, spec), 6)
    assert sorted(results) == [False] * 5 + [True]
    assert st.read_bytes(uri, spec).startswith(b"w")


def test_endpoint_with_credentials_is_refused() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="must not embed credentials"):
        StorageSpec(endpoint_url="http://AKIA:secretvalue@minio:9000")


def test_simulated_disk_full_leaves_no_partial_file(tmp_path, monkeypatch) -> None:
    uri = str(tmp_path / "features" / "shard.parquet")
    st.write_bytes_atomic(uri, b"old")
    monkeypatch.setenv("INFLUMIX_FAULT_ENOSPC", f"shard.parquet:{tmp_path / 'marker'}")
    with pytest.raises(StorageError, match=r"shard\.parquet.*No space left"):
        st.write_bytes_atomic(uri, b"new content of the shard")
    assert st.read_bytes(uri) == b"old"
    assert os.listdir(tmp_path / "features") == ["shard.parquet"]  # the half-written temp file is gone
    st.write_bytes_atomic(uri, b"new")  # once per marker: the retry succeeds
    assert st.read_bytes(uri) == b"new"
