"""Storage behind one interface: a :class:`Storage` per URI scheme over an fsspec filesystem.

``storage_for(uri, spec)`` returns the backend for a URI (local paths and ``file://``, ``s3://``, any
other fsspec protocol such as ``memory://``); its methods are the atomic, conditional and listing
primitives. The functions below are thin conveniences that take ``(uri, ..., spec)`` and delegate to
that backend; errors are :class:`StorageError` subclasses whose message names the URI (and endpoint).
"""

from __future__ import annotations

from typing import Any

from fsspec import AbstractFileSystem

from operators.errors import StorageError
from operators.io.storage.base import Storage, StorageNotFoundError, StorageSpec
from operators.io.storage.registry import BACKENDS, backend_for, clear_filesystem_cache, storage_for

__all__ = [
    "BACKENDS", "Storage", "StorageError", "StorageNotFoundError", "StorageSpec", "backend_for",
    "check_reachable", "clear_filesystem_cache", "delete", "delete_if_match", "exists", "filesystem_for",
    "join", "list_file_infos", "list_file_versions", "list_files", "local_path", "makedirs", "put_if_absent",
    "put_if_match",
    "read_bytes", "read_json", "read_many", "read_text", "read_versioned", "storage_for",
    "write_bytes_atomic", "write_json_atomic", "write_text_atomic",
]


def join(uri: str, *parts: str) -> str:
    """Join path components onto a URI (``os.path.join`` locally, ``/`` elsewhere)."""
    return backend_for(uri).join(uri, *parts)


def filesystem_for(uri: str, spec: StorageSpec | None = None) -> tuple[AbstractFileSystem, str]:
    """``(fsspec filesystem, path)`` for ``uri``, for consumers such as pyarrow."""
    return storage_for(uri, spec).filesystem(uri)


def local_path(uri: str, spec: StorageSpec | None = None) -> str | None:
    """The path of ``uri`` on this machine, or None when its backend is not local."""
    return storage_for(uri, spec).local_path(uri)


def exists(uri: str, spec: StorageSpec | None = None) -> bool:
    """True if a file/object (or directory/prefix) exists at ``uri``."""
    return storage_for(uri, spec).exists(uri)


def read_bytes(uri: str, spec: StorageSpec | None = None) -> bytes:
    """Read a whole file/object."""
    return storage_for(uri, spec).read_bytes(uri)


def read_text(uri: str, spec: StorageSpec | None = None, encoding: str = "utf-8") -> str:
    """Read a whole file as text."""
    return storage_for(uri, spec).read_text(uri, encoding)


def read_json(uri: str, spec: StorageSpec | None = None) -> Any:
    """Read and parse a JSON document."""
    return storage_for(uri, spec).read_json(uri)


def read_many(uris: list[str], spec: StorageSpec | None = None) -> dict[str, bytes | StorageError]:
    """Read several files (one concurrent batch per backend where it can); failures are returned per
    URI, not raised."""
    out: dict[str, bytes | StorageError] = {}
    groups: dict[Storage, list[str]] = {}
    for uri in uris:
        try:
            groups.setdefault(storage_for(uri, spec), []).append(uri)
        except StorageError as exc:
            out[uri] = exc
    for store, group in groups.items():
        out.update(store.read_many(group))
    return {uri: out[uri] for uri in uris}


def list_file_infos(uri_or_glob: str, suffixes: tuple[str, ...] | None = None,
                    spec: StorageSpec | None = None) -> list[tuple[str, int | None]]:
    """Like :func:`list_files` but returns ``(uri, size_bytes)`` pairs."""
    return storage_for(uri_or_glob, spec).list_file_infos(uri_or_glob, suffixes)


def list_file_versions(uri_or_glob: str, suffixes: tuple[str, ...] | None = None,
                       spec: StorageSpec | None = None) -> list[tuple[str, int | None, str | None]]:
    """Like :func:`list_files` but returns ``(uri, size_bytes, version)`` (ETag or mtime; may be None)."""
    return storage_for(uri_or_glob, spec).list_file_versions(uri_or_glob, suffixes)


def list_files(uri_or_glob: str, suffixes: tuple[str, ...] | None = None,
               spec: StorageSpec | None = None) -> list[str]:
    """Sorted full URIs of files under a directory/prefix (recursive), a glob, or a single file;
    hidden files are skipped and a path that matches nothing yields ``[]``."""
    return storage_for(uri_or_glob, spec).list_files(uri_or_glob, suffixes)


def delete(uri: str, spec: StorageSpec | None = None, recursive: bool = False) -> None:
    """Delete a file (or a directory/prefix tree with ``recursive``); missing paths are ignored."""
    storage_for(uri, spec).delete(uri, recursive)


def makedirs(uri: str, spec: StorageSpec | None = None) -> None:
    """Create a directory tree (a no-op where prefixes need no creation)."""
    storage_for(uri, spec).makedirs(uri)


def write_bytes_atomic(uri: str, data: bytes, spec: StorageSpec | None = None) -> None:
    """Write ``data`` so readers see either the old or the complete new content, never a part."""
    storage_for(uri, spec).write_bytes_atomic(uri, data)


def write_text_atomic(uri: str, text: str, spec: StorageSpec | None = None) -> None:
    """Atomically write UTF-8 text."""
    storage_for(uri, spec).write_text_atomic(uri, text)


def write_json_atomic(uri: str, obj: Any, spec: StorageSpec | None = None) -> None:
    """Atomically write JSON (sorted keys, indent 2, trailing newline)."""
    storage_for(uri, spec).write_json_atomic(uri, obj)


def put_if_absent(uri: str, data: bytes, spec: StorageSpec | None = None) -> bool:
    """Create ``uri`` with ``data`` only if nothing exists there; return False if it already did."""
    return storage_for(uri, spec).put_if_absent(uri, data)


def read_versioned(uri: str, spec: StorageSpec | None = None) -> tuple[bytes, str] | None:
    """``(content, version)`` of ``uri`` read in one request, or None if it does not exist."""
    return storage_for(uri, spec).read_versioned(uri)


def put_if_match(uri: str, data: bytes, version: str, spec: StorageSpec | None = None) -> bool:
    """Replace ``uri`` with ``data`` only if its current version is ``version``; False otherwise."""
    return storage_for(uri, spec).put_if_match(uri, data, version)


def delete_if_match(uri: str, version: str, spec: StorageSpec | None = None) -> bool:
    """Delete ``uri`` only if its current version is ``version``; False otherwise."""
    return storage_for(uri, spec).delete_if_match(uri, version)


def check_reachable(uri: str, spec: StorageSpec | None = None) -> None:
    """Fail fast (short timeouts, at most one retry) if ``uri``'s storage cannot be used."""
    storage_for(uri, spec).check_reachable(uri)
