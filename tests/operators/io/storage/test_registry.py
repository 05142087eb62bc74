"""Scheme registry: which backend serves a URI, one cached instance per scheme and spec, one-line schemes."""

from __future__ import annotations

import fsspec
import pytest

from operators.io import storage as st
from operators.io.storage import StorageSpec, registry
from operators.io.storage.generic import FsspecStorage
from operators.io.storage.local import LocalStorage

pytestmark = pytest.mark.timeout(60)


class ScratchStorage(FsspecStorage):
    """A toy backend: ``scratch://x`` lives at ``/scratch/x`` of the in-memory filesystem."""

    def __init__(self, scheme: str, spec: StorageSpec) -> None:
        super().__init__(scheme, spec, fsspec.filesystem("memory"))

    def path(self, uri: str) -> str:
        return "/scratch/" + uri.split("://", 1)[1].lstrip("/")

    def uri(self, path: str) -> str:
        return "scratch://" + path.removeprefix("/scratch/")


def test_backend_for_each_scheme() -> None:
    from operators.io.storage.s3 import S3Storage

    assert st.backend_for("/a/b") is LocalStorage
    assert st.backend_for("file:///a/b") is LocalStorage
    assert st.backend_for("s3://b/k") is S3Storage and st.backend_for("s3a://b/k") is S3Storage
    assert st.backend_for("memory://x") is FsspecStorage
    assert st.backend_for("gs://b/k") is FsspecStorage  # any protocol fsspec knows


def test_storage_for_is_cached_per_scheme_and_spec() -> None:
    spec = StorageSpec(retries=2)
    first = st.storage_for("s3://b/one", spec)
    assert st.storage_for("s3://other/two", StorageSpec(retries=2)) is first  # equal specs share one
    assert st.storage_for("s3://b/one", StorageSpec(retries=3)) is not first
    assert st.storage_for("/tmp/x") is st.storage_for("/var/y")
    st.clear_filesystem_cache()
    assert st.storage_for("s3://b/one", spec) is not first


def test_a_new_scheme_is_one_registration_line(monkeypatch) -> None:
    monkeypatch.setitem(registry.BACKENDS, "scratch", f"{__name__}:ScratchStorage")
    uri = "scratch://run/ptr.json"
    try:
        assert isinstance(st.storage_for(uri), ScratchStorage)
        assert st.put_if_absent(uri, b"v1") is True
        assert fsspec.filesystem("memory").cat_file("/scratch/run/ptr.json") == b"v1"
        _, version = st.read_versioned(uri)
        assert st.put_if_match(uri, b"v2", version) is True
        assert st.list_files("scratch://run") == [uri]
    finally:
        fsspec.filesystem("memory").rm("/scratch", recursive=True)
        st.clear_filesystem_cache()
