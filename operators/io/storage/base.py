"""The :class:`Storage` interface: one fsspec filesystem behind atomic, conditional and listing methods.

A backend (one file per scheme family, registered in :mod:`operators.io.storage.registry`) maps URIs to
filesystem paths and supplies the primitives whose guarantees depend on the filesystem: atomic writes,
create-if-absent, compare-and-swap and the reachability check. Listing, text/JSON helpers and error
wrapping are shared here.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import os
import posixpath
import uuid
from collections.abc import Iterator
from typing import IO, Any, ClassVar

from fsspec import AbstractFileSystem
from pydantic import BaseModel, ConfigDict, Field, field_validator

from operators.errors import StorageError
from operators.io.secrets import has_userinfo

_GLOB_CHARS = ("*", "?", "[")


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The object or file does not exist (also catchable as ``FileNotFoundError``)."""


class StorageSpec(BaseModel):
    """How to reach object storage; credentials come from the usual AWS environment variables."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_url: str | None = None
    region: str | None = None
    anon: bool = False
    retries: int = Field(default=3, ge=0, le=20)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0)

    @field_validator("endpoint_url")
    @classmethod
    def _no_credentials(cls, url: str | None) -> str | None:
        if url is not None and has_userinfo(url):
            raise ValueError("must not embed credentials (user:password@); "
                             "use the AWS_* environment variables")
        return url


def content_version(data: bytes) -> str:
    """The version of a file on backends without native versions: the SHA-256 of its content."""
    return hashlib.sha256(data).hexdigest()


#: fsspec info keys that change with an object's content, most specific first.
_VERSION_KEYS = ("VersionId", "ETag", "etag", "generation", "md5Hash", "mtime", "LastModified",
                 "last_modified", "updated", "created")


def file_version(info: dict) -> str | None:
    """The content version an fsspec ``info`` dict carries (see :meth:`Storage.list_file_versions`)."""
    for key in _VERSION_KEYS:
        value = info.get(key)
        if value not in (None, ""):
            if key == "mtime" and isinstance(value, float):
                return f"mtime:{int(round(value * 1e9))}"
            return f"{key}:{str(value).strip(chr(34))}"
    return None


def is_hidden(path: str) -> bool:
    """True for a basename starting with ``.`` (in-flight temp files, lock files); never listed."""
    return posixpath.basename(path.replace(os.sep, "/")).startswith(".")


def hidden_temp(path: str) -> str:
    """A unique hidden sibling of ``path`` for a write in flight."""
    parent, name = posixpath.split(path)
    return posixpath.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:12]}")


class Storage(abc.ABC):
    """One fsspec filesystem and the :class:`StorageSpec` it was made for.

    Methods take full URIs of this backend's scheme and raise :class:`StorageError` (or
    :class:`StorageNotFoundError`) naming the URI, plus the endpoint where :meth:`where` adds it.
    """

    is_local: ClassVar[bool] = False
    """True when URIs name files on this machine (:meth:`local_path` answers them)."""
    wrappable: ClassVar[tuple[type[BaseException], ...]] = (OSError,)
    """Low-level errors translated into :class:`StorageError`."""

    def __init__(self, scheme: str, spec: StorageSpec, fs: AbstractFileSystem) -> None:
        self.scheme, self.spec, self.fs = scheme, spec, fs

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.scheme!r})"

    # ------------------------------------------------------------------ naming

    def path(self, uri: str) -> str:
        """The filesystem path of ``uri``."""
        return str(self.fs._strip_protocol(uri))

    def uri(self, path: str) -> str:
        """The URI of a filesystem path, in the form listings return."""
        return f"{self.scheme}://{path.lstrip('/')}"

    @classmethod
    def join(cls, uri: str, *parts: str) -> str:
        """Join path components onto a URI with ``/`` (slashes around each part are dropped)."""
        out = uri.rstrip("/")
        for part in parts:
            part = part.strip("/")
            if part:
                out = f"{out}/{part}"
        return out

    def canonical(self, uri: str) -> str:
        """``uri`` as listings name it, without a trailing slash."""
        return self.uri(self.path(uri)).rstrip("/")

    def filesystem(self, uri: str) -> tuple[AbstractFileSystem, str]:
        """``(fsspec filesystem, path)`` for consumers such as pyarrow that take a filesystem."""
        return self.fs, self.path(uri)

    def local_path(self, uri: str) -> str | None:
        """The path of ``uri`` on this machine, or None when the backend is not local."""
        return None

    def where(self, uri: str) -> str:
        """``uri`` as error messages name it."""
        return uri

    @contextlib.contextmanager
    def _wrap(self, action: str, uri: str) -> Iterator[None]:
        """Translate low-level I/O errors into StorageError naming the URI (and endpoint)."""
        try:
            yield
        except StorageError:
            raise
        except FileNotFoundError as exc:
            raise StorageNotFoundError(f"{action} {self.where(uri)}: not found ({exc})") from exc
        except self.wrappable as exc:
            detail = str(exc) or type(exc).__name__
            raise StorageError(f"{action} {self.where(uri)} failed: {detail}") from exc

    # ----------------------------------------------------------------- reading

    def exists(self, uri: str) -> bool:
        """True if a file/object (or directory/prefix) exists at ``uri``."""
        with self._wrap("checking", uri):
            return bool(self.fs.exists(self.path(uri)))

    def read_bytes(self, uri: str) -> bytes:
        """Read a whole file/object."""
        with self._wrap("reading", uri):
            return bytes(self.fs.cat_file(self.path(uri)))

    def read_text(self, uri: str, encoding: str = "utf-8") -> str:
        """Read a whole file as text."""
        data = self.read_bytes(uri)
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as exc:
            raise StorageError(f"reading {uri}: not valid {encoding} text ({exc})") from exc

    def read_json(self, uri: str) -> Any:
        """Read and parse a JSON document."""
        text = self.read_text(uri)
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise StorageError(f"reading {uri}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc

    def read_many(self, uris: list[str]) -> dict[str, bytes | StorageError]:
        """Read several files; failures are returned per URI, not raised."""
        out: dict[str, bytes | StorageError] = {}
        for uri in uris:
            try:
                out[uri] = self.read_bytes(uri)
            except StorageError as exc:
                out[uri] = exc
        return out

    def open(self, uri: str, mode: str = "rb") -> IO[bytes]:
        """A seekable stream reading ranges on demand; errors are the filesystem's own (OSError)."""
        return self.fs.open(self.path(uri), mode)

    # ----------------------------------------------------------------- listing

    def list_file_infos(self, uri_or_glob: str,
                        suffixes: tuple[str, ...] | None = None) -> list[tuple[str, int | None]]:
        """Like :meth:`list_files` but returns ``(uri, size_bytes)`` pairs."""
        return [(uri, size) for uri, size, _ in self.list_file_versions(uri_or_glob, suffixes)]

    def list_file_versions(self, uri_or_glob: str, suffixes: tuple[str, ...] | None = None
                           ) -> list[tuple[str, int | None, str | None]]:
        """Like :meth:`list_files` but returns ``(uri, size_bytes, version)``: the version is what
        the backend says changes with the content (ETag / version id / generation on object stores,
        the modification time locally), or None when it says nothing."""
        fs, path = self.fs, self.path(uri_or_glob)
        found: dict[str, dict] = {}
        with self._wrap("listing", uri_or_glob):
            if any(ch in path for ch in _GLOB_CHARS):
                roots = sorted(fs.glob(path))
            else:
                roots = [path] if fs.exists(path) else []
            for root in roots:
                if fs.isdir(root):
                    for p, info in fs.find(root, detail=True).items():
                        if info.get("type", "file") == "file" and not p.endswith("/"):
                            found[p] = info
                else:
                    found[root] = fs.info(root)
        return [(self.uri(p), int(info["size"]) if info.get("size") is not None else None, file_version(info))
                for p, info in sorted(found.items())
                if not is_hidden(p) and (not suffixes or p.endswith(tuple(suffixes)))]

    def list_files(self, uri_or_glob: str, suffixes: tuple[str, ...] | None = None) -> list[str]:
        """Sorted full URIs of files under a directory/prefix (recursive), a glob, or a single file.

        Hidden files (basename starting with ``.``, e.g. in-flight temp files) are skipped; a path
        that matches nothing yields an empty list.
        """
        return [uri for uri, _ in self.list_file_infos(uri_or_glob, suffixes)]

    # ----------------------------------------------------------------- writing

    @abc.abstractmethod
    def write_bytes_atomic(self, uri: str, data: bytes) -> None:
        """Write ``data`` so readers see either the old or the complete new content, never a part."""

    @abc.abstractmethod
    def atomic_writer(self, uri: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        """A binary stream whose content appears at ``uri`` whole, and only if the block exits cleanly."""

    def write_text_atomic(self, uri: str, text: str) -> None:
        """Atomically write UTF-8 text."""
        self.write_bytes_atomic(uri, text.encode("utf-8"))

    def write_json_atomic(self, uri: str, obj: Any) -> None:
        """Atomically write JSON (sorted keys, indent 2, trailing newline)."""
        self.write_text_atomic(uri, json.dumps(obj, sort_keys=True, indent=2) + "\n")

    def delete(self, uri: str, recursive: bool = False) -> None:
        """Delete a file (or a directory/prefix tree with ``recursive``); missing paths are ignored."""
        fs, path = self.fs, self.path(uri)
        with self._wrap("deleting", uri):
            if not fs.exists(path):
                return
            if fs.isdir(path):
                if not recursive:
                    raise StorageError(f"deleting {uri}: is a directory (pass recursive=True)")
                fs.rm(path, recursive=True)
            else:
                fs.rm_file(path)

    def makedirs(self, uri: str) -> None:
        """Create a directory tree (backends without directories make this a no-op)."""
        with self._wrap("creating directory", uri):
            self.fs.makedirs(self.path(uri), exist_ok=True)

    # ------------------------------------------------------------- conditional

    @abc.abstractmethod
    def put_if_absent(self, uri: str, data: bytes) -> bool:
        """Create ``uri`` with ``data`` only if nothing exists there; False if something already did."""

    @abc.abstractmethod
    def read_versioned(self, uri: str) -> tuple[bytes, str] | None:
        """``(content, version)`` of ``uri`` read in one request, or None if it does not exist."""

    @abc.abstractmethod
    def put_if_match(self, uri: str, data: bytes, version: str) -> bool:
        """Replace ``uri`` with ``data`` only if its current version is ``version``; False otherwise
        (changed or deleted meanwhile)."""

    @abc.abstractmethod
    def delete_if_match(self, uri: str, version: str) -> bool:
        """Delete ``uri`` only if its current version is ``version``; False otherwise."""

    @abc.abstractmethod
    def check_reachable(self, uri: str) -> None:
        """Fail fast with StorageError (short timeouts) if ``uri``'s storage cannot be used."""
