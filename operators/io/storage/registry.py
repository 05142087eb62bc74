"""Which :class:`Storage` backend serves a URI scheme, and one cached instance per process.

A scheme listed in :data:`BACKENDS` gets its backend (imported on first use); any other protocol fsspec
knows gets the generic :class:`~operators.io.storage.generic.FsspecStorage`.
"""

from __future__ import annotations

import importlib
import os
import re
import threading

import fsspec

from operators.errors import StorageError
from operators.io.storage.base import Storage, StorageSpec

BACKENDS: dict[str, str] = {
    "": "operators.io.storage.local:LocalStorage",  # a plain path
    "file": "operators.io.storage.local:LocalStorage",
    "s3": "operators.io.storage.s3:S3Storage",
    "s3a": "operators.io.storage.s3:S3Storage",
}
"""URI scheme → ``"module:Class"`` of its backend; adding a scheme is one line here."""
GENERIC = "operators.io.storage.generic:FsspecStorage"

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_DEFAULT_SPEC = StorageSpec()
_CACHE: dict[tuple[int, type[Storage], str, StorageSpec], Storage] = {}
_CACHE_LOCK = threading.Lock()


def scheme_of(uri: str) -> str:
    """The URI scheme, or ``""`` for a plain path."""
    return uri.split("://", 1)[0] if "://" in uri else ""


def backend_for(uri: str) -> type[Storage]:
    """The backend class for ``uri``'s scheme; StorageError naming the URI if there is none."""
    scheme = scheme_of(uri)
    target = BACKENDS.get(scheme)
    if target is None:
        if not _SCHEME.fullmatch(scheme) or scheme not in fsspec.available_protocols():
            raise StorageError(f"unsupported URI scheme in {uri!r} "
                               f"(use a local path, s3:// or another fsspec protocol)")
        target = GENERIC
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def storage_for(uri: str, spec: StorageSpec | None = None) -> Storage:
    """The :class:`Storage` for ``uri`` and ``spec`` (one per scheme and spec in each process)."""
    spec = spec if spec is not None else _DEFAULT_SPEC
    cls, scheme = backend_for(uri), scheme_of(uri)
    key = (os.getpid(), cls, scheme, spec)
    with _CACHE_LOCK:
        store = _CACHE.get(key)
        if store is None:
            try:
                store = cls(scheme, spec)
            except ImportError as exc:  # e.g. gcsfs not installed for gs://
                raise StorageError(f"unsupported URI scheme in {uri!r}: {exc}") from exc
            _CACHE[key] = store
        return store


def clear_filesystem_cache() -> None:
    """Forget cached backends and their filesystems (e.g. after credentials or endpoints changed)."""
    with _CACHE_LOCK:
        _CACHE.clear()
