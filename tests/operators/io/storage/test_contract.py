"""The storage contract, run through the module API on every backend (local, memory://, moto S3)."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.errors import StorageError
from operators.io import storage as st
from tests.fixtures.concurrency import race

pytestmark = pytest.mark.timeout(60)


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
    assert st.list_files(root, None, spec) == sorted(
        [uri, st.join(root, "t.txt"), st.join(root, "o.json")])  # no temp files left behind


def test_list_recursive_suffix_and_glob(where) -> None:
    spec, root = where
    names = ["d1/x.parquet", "d1/y.jsonl", "d2/sub/z.parquet", "top.parquet", "d2/notes.txt"]
    for name in names:
        st.write_bytes_atomic(st.join(root, *name.split("/")), name.encode(), spec)
    listed = st.list_files(root, None, spec)
    assert listed == sorted(st.join(root, *n.split("/")) for n in names)
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
    assert st.storage_for(root, spec).canonical(root + "/") == st.storage_for(root, spec).canonical(root)


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


def test_put_if_absent_race_has_one_winner(where) -> None:
    spec, root = where
    uri = st.join(root, "race.txt")
    results = race(lambda i: st.put_if_absent(uri, f"worker-{i}".encode(), spec), 6)
    assert sorted(results) == [False] * 5 + [True]
    assert st.read_text(uri, spec) == f"worker-{results.index(True)}"
    assert st.list_files(root, None, spec) == [uri]  # no temp files left


def test_delete_tree_needs_recursive(where) -> None:
    spec, root = where
    for name in ("a.bin", "b.bin"):
        st.write_bytes_atomic(st.join(root, "tree", name), b"x", spec)
    st.write_bytes_atomic(st.join(root, "keep.bin"), b"k", spec)
    with pytest.raises(StorageError, match="is a directory"):
        st.delete(st.join(root, "tree"), spec)
    st.delete(st.join(root, "tree"), spec, recursive=True)
    assert st.list_files(root, None, spec) == [st.join(root, "keep.bin")]


def test_missing_file_error_names_uri(where) -> None:
    spec, root = where
    uri = st.join(root, "absent.bin")
    with pytest.raises(StorageError, match="absent.bin") as info:
        st.read_bytes(uri, spec)
    assert isinstance(info.value, FileNotFoundError)


def test_invalid_json_error_names_uri_and_line(where) -> None:
    spec, root = where
    uri = st.join(root, "bad.json")
    st.write_bytes_atomic(uri, b'{\n  "a": ,\n}', spec)
    with pytest.raises(StorageError, match=r"bad\.json: invalid JSON at line 2"):
        st.read_json(uri, spec)


def test_read_many_reports_missing_per_uri(where) -> None:
    spec, root = where
    present = st.join(root, "p.json")
    st.write_bytes_atomic(present, b"{}", spec)
    absent = st.join(root, "q.json")
    got = st.read_many([absent, present, "nosuch://x/y"], spec)
    assert list(got) == [absent, present, "nosuch://x/y"]
    assert got[present] == b"{}"
    assert isinstance(got[absent], StorageError) and "q.json" in str(got[absent])
    assert isinstance(got["nosuch://x/y"], StorageError) and "unsupported URI scheme" in str(got["nosuch://x/y"])


def test_conditional_update_and_delete(where) -> None:
    spec, root = where
    uri = st.join(root, "ptr.json")
    assert st.read_versioned(uri, spec) is None
    assert st.put_if_match(uri, b"x", "nope", spec) is False  # nothing to match
    assert st.delete_if_match(uri, "nope", spec) is False
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
    assert st.read_bytes(uri, spec) == f"w{results.index(True)}".encode()


def test_atomic_writer_publishes_only_a_complete_stream(where) -> None:
    spec, root = where
    store = st.storage_for(root, spec)
    uri = st.join(root, "out", "ids.txt")
    st.write_bytes_atomic(uri, b"old\n", spec)
    with pytest.raises(RuntimeError, match="source failed"), store.atomic_writer(uri) as out:
        out.write(b"partial\n")
        raise RuntimeError("source failed")
    assert st.read_bytes(uri, spec) == b"old\n"  # the failed stream left the old content
    with store.atomic_writer(uri) as out:
        for i in range(3):
            out.write(f"{i}\n".encode())
    assert st.read_bytes(uri, spec) == b"0\n1\n2\n"
    assert st.list_files(root, None, spec) == [uri]  # no temp files left


def test_open_streams_ranges_and_filesystem_serves_pyarrow(where) -> None:
    spec, root = where
    store = st.storage_for(root, spec)
    uri = st.join(root, "t.parquet")
    sink = io.BytesIO()
    pq.write_table(pa.table({"id": list(range(100))}), sink)
    st.write_bytes_atomic(uri, sink.getvalue(), spec)
    with store.open(uri) as fh:
        fh.seek(-4, 2)
        assert fh.read() == b"PAR1"  # a seekable stream: the Parquet footer magic
    fs, path = st.filesystem_for(uri, spec)
    assert pq.read_table(path, filesystem=fs).column("id").to_pylist() == list(range(100))
    assert (st.local_path(uri, spec) is not None) == store.is_local
