"""Generic fsspec backend on ``memory://``: URI form, temp-and-move writes, the process-local lock."""

from __future__ import annotations

import threading

import fsspec
import pytest

from operators.errors import StorageError
from operators.io import storage as st
from operators.io.storage.generic import FsspecStorage

pytestmark = pytest.mark.timeout(60)


@pytest.fixture()
def root() -> str:
    memory = fsspec.filesystem("memory")
    yield "memory://influmix-generic"
    if memory.exists("/influmix-generic"):
        memory.rm("/influmix-generic", recursive=True)


def test_memory_uris_map_to_paths_and_back(root: str) -> None:
    store = st.storage_for(root)
    assert type(store) is FsspecStorage and not store.is_local
    assert store.path(st.join(root, "a", "b.bin")) == "/influmix-generic/a/b.bin"
    assert store.uri("/influmix-generic/a/b.bin") == "memory://influmix-generic/a/b.bin"
    st.write_bytes_atomic(st.join(root, "a", "b.bin"), b"x")
    assert fsspec.filesystem("memory").cat_file("/influmix-generic/a/b.bin") == b"x"
    assert st.list_files(root) == [st.join(root, "a", "b.bin")]
    st.check_reachable(root)
    assert st.local_path(root) is None


def test_failed_move_keeps_old_content_and_no_temp(root: str, monkeypatch) -> None:
    uri = st.join(root, "f.bin")
    st.write_bytes_atomic(uri, b"old")
    store = st.storage_for(uri)

    def boom(*args, **kwargs) -> None:
        raise OSError("backend refused the move")

    monkeypatch.setattr(store.fs, "mv", boom)
    with pytest.raises(StorageError, match=r"writing memory://influmix-generic/f\.bin failed"):
        st.write_bytes_atomic(uri, b"new")
    monkeypatch.undo()
    assert st.read_bytes(uri) == b"old"
    assert fsspec.filesystem("memory").find("/influmix-generic") == ["/influmix-generic/f.bin"]


def test_conditional_writes_wait_for_the_process_lock(root: str) -> None:
    uri = st.join(root, "ptr.json")
    st.write_bytes_atomic(uri, b"v1")
    _, version = st.read_versioned(uri)
    store = st.storage_for(uri)
    result: list[bool] = []
    with store._lock(store.path(uri)):
        worker = threading.Thread(target=lambda: result.append(st.put_if_match(uri, b"v2", version)))
        worker.start()
        worker.join(0.3)
        assert worker.is_alive() and result == []  # blocked while the lock is held
        st.write_bytes_atomic(uri, b"changed meanwhile")
    worker.join(10)
    assert result == [False]  # it compared after the change: the stale version is refused
    assert st.read_bytes(uri) == b"changed meanwhile"


def test_unknown_or_uninstalled_schemes_name_the_uri() -> None:
    with pytest.raises(StorageError, match=r"unsupported URI scheme in 'nosuch://b/x'"):
        st.read_bytes("nosuch://b/x")
    with pytest.raises(StorageError, match=r"unsupported URI scheme in '/data/a://b'"):
        st.exists("/data/a://b")
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(StorageError, match=r"gs://b/x.*gcsfs"):
            st.read_bytes("gs://b/x")
