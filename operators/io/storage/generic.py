"""Any other fsspec protocol (``memory://``, ``gs://``, ``abfs://``, ...) through its fsspec filesystem.

Guarantees, honestly stated:

- An atomic write goes to a hidden temp sibling that is then moved into place, so readers never see a
  part of it (the move is a rename on file systems and a copy of a complete object on object stores).
- Conditional writes compare content hashes (the version is the SHA-256 of the content) under a lock
  held **in this process only**. They are exact for ``memory://`` and for a single writing process;
  across processes or hosts they are advisory. A backend with native conditional writes (as S3's
  ``If-None-Match``/``If-Match``) deserves its own file, as ``s3.py`` is.

Options and credentials come from the backend's own environment variables and ``fsspec.config``; the
:class:`StorageSpec` fields are S3 settings. URIs are ``<scheme>://<path>`` with no host part.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import IO

import fsspec
from fsspec import AbstractFileSystem

from operators.io.storage.base import Storage, StorageSpec, content_version, hidden_temp

_STRIPES = tuple(threading.Lock() for _ in range(64))


class FsspecStorage(Storage):
    """A registered fsspec protocol; conditional writes fall back to a process-local lock."""

    def __init__(self, scheme: str, spec: StorageSpec, fs: AbstractFileSystem | None = None) -> None:
        super().__init__(scheme, spec, fs if fs is not None else fsspec.filesystem(scheme))

    @contextlib.contextmanager
    def _lock(self, path: str) -> Iterator[None]:
        """Exclusive access to ``path`` among this process's threads."""
        with _STRIPES[hash((self.scheme, path)) % len(_STRIPES)]:
            yield

    def write_bytes_atomic(self, uri: str, data: bytes) -> None:
        """Write a hidden temp sibling, then move it into place."""
        with self._wrap("writing", uri), self.atomic_writer(uri) as fh:
            fh.write(bytes(data))

    @contextlib.contextmanager
    def atomic_writer(self, uri: str) -> Iterator[IO[bytes]]:
        """Stream into a hidden temp sibling, moved into place when the block exits cleanly."""
        path = self.path(uri)
        tmp = hidden_temp(path)
        with self._wrap("writing", uri):
            fh = self.fs.open(tmp, "wb")
        try:
            try:
                yield fh
            finally:
                with self._wrap("writing", uri):
                    fh.close()
            with self._wrap("writing", uri):
                self.fs.mv(tmp, path)
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.rm_file(tmp)
            raise

    def check_reachable(self, uri: str) -> None:
        """Ask the filesystem whether ``uri`` exists; any failure to answer raises."""
        self.exists(uri)

    # ------------------------------------------------------------- conditional

    def _current(self, path: str) -> tuple[bytes, str] | None:
        try:
            data = bytes(self.fs.cat_file(path))
        except FileNotFoundError:
            return None
        return data, content_version(data)

    def put_if_absent(self, uri: str, data: bytes) -> bool:
        """Under the lock: write ``data`` atomically unless ``uri`` exists."""
        path = self.path(uri)
        with self._wrap("creating", uri), self._lock(path):
            if self.fs.exists(path):
                return False
            self.write_bytes_atomic(uri, data)
            return True

    def read_versioned(self, uri: str) -> tuple[bytes, str] | None:
        """Content and its SHA-256, read under the lock."""
        path = self.path(uri)
        with self._wrap("reading", uri), self._lock(path):
            return self._current(path)

    def put_if_match(self, uri: str, data: bytes, version: str) -> bool:
        """Under the lock: compare the content hash, then replace atomically."""
        return self._if_match(uri, version, "updating", lambda: self.write_bytes_atomic(uri, data))

    def delete_if_match(self, uri: str, version: str) -> bool:
        """Under the lock: compare the content hash, then delete."""
        return self._if_match(uri, version, "deleting", lambda: self.fs.rm_file(self.path(uri)))

    def _if_match(self, uri: str, version: str, verb: str, apply: Callable[[], object]) -> bool:
        path = self.path(uri)
        with self._wrap(verb, uri), self._lock(path):
            current = self._current(path)
            if current is None or current[1] != version:
                return False
            apply()
            return True
