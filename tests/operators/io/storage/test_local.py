"""Local backend: fsync'ed rename, hard-link create, flock'ed compare-and-swap, disk-full handling."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest

from operators.errors import StorageError
from operators.io import storage as st
from operators.io.storage.local import LocalStorage

pytestmark = pytest.mark.timeout(60)


def test_paths_file_uris_and_join(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = st.storage_for("relative/dir")
    assert isinstance(store, LocalStorage) and store.is_local
    fs, path = st.filesystem_for("relative/dir")
    assert fs is store.fs and path == str(tmp_path / "relative" / "dir")
    assert st.local_path(f"file://{tmp_path}/x.bin") == str(tmp_path / "x.bin")
    assert st.join("/a/b", "c", "d.json") == "/a/b/c/d.json"
    st.write_bytes_atomic(f"file://{tmp_path}/x.bin", b"via file://")
    assert (tmp_path / "x.bin").read_bytes() == b"via file://"
    assert st.list_files(f"file://{tmp_path}", (".bin",)) == [str(tmp_path / "x.bin")]  # plain paths


def test_failed_atomic_write_keeps_old_content(tmp_path, monkeypatch) -> None:
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


def test_put_if_absent_without_hard_links_uses_exclusive_create(tmp_path, monkeypatch) -> None:
    def no_links(src: str, dst: str) -> None:
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    uri = str(tmp_path / "claim.json")
    assert st.put_if_absent(uri, b"first") is True
    assert st.put_if_absent(uri, b"second") is False
    assert st.read_bytes(uri) == b"first"
    assert os.listdir(tmp_path) == ["claim.json"]


def test_compare_and_swap_lock_holds_across_processes(tmp_path) -> None:
    uri = str(tmp_path / "ptr.json")
    st.write_bytes_atomic(uri, b"v1")
    _, version = st.read_versioned(uri)
    holder = textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(tmp_path / '.ptr.json.lock')!r}, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
        time.sleep(0.5)
        with open({uri!r}, "wb") as fh:
            fh.write(b"changed by another process")
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        # waits for the other process's lock, then sees its later change: the stale version is refused
        assert st.put_if_match(uri, b"v2", version) is False
    finally:
        proc.wait(timeout=30)
    assert st.read_bytes(uri) == b"changed by another process"
    assert st.list_files(str(tmp_path)) == [uri]  # the lock file is hidden


def test_check_reachable_needs_a_directory_ancestor(tmp_path) -> None:
    st.check_reachable(str(tmp_path / "new" / "run"))  # missing parents are fine
    (tmp_path / "file").write_text("x")
    st.check_reachable(str(tmp_path / "file"))  # an existing file is fine
    with pytest.raises(StorageError, match=r"ancestor .*file is not a directory"):
        st.check_reachable(str(tmp_path / "file" / "run"))


def test_outputs_get_the_umask_mode_not_mkstemps_0600(tmp_path) -> None:
    """A manifest must be readable by a trainer running as another user: atomic writes, conditional creates
    and staged directories get the modes plain open()/mkdir() would give under the process umask."""
    import stat

    from operators.io import storage as st
    from operators.io.storage.local import make_public_dir

    old = os.umask(0o022)
    try:
        st.write_bytes_atomic(str(tmp_path / "a" / "manifest.json"), b"{}")
        assert st.put_if_absent(str(tmp_path / "a" / "_SUCCESS"), b"{}")
        with st.storage_for(str(tmp_path)).atomic_writer(str(tmp_path / "a" / "w.bin")) as fh:
            fh.write(b"x")
        for name in ("manifest.json", "_SUCCESS", "w.bin"):
            assert stat.S_IMODE((tmp_path / "a" / name).stat().st_mode) == 0o644, name
        os.umask(0o077)
        st.write_bytes_atomic(str(tmp_path / "a" / "private.json"), b"{}")
        assert stat.S_IMODE((tmp_path / "a" / "private.json").stat().st_mode) == 0o600
        os.umask(0o022)
        staged = tmp_path / "staged"
        staged.mkdir(mode=0o700)
        make_public_dir(staged)
        assert stat.S_IMODE(staged.stat().st_mode) == 0o755
    finally:
        os.umask(old)
