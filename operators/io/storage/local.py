"""Local paths and ``file://`` URIs.

Atomic writes go to a hidden temp file in the same directory, are fsynced and renamed into place (then
the directory is fsynced). ``put_if_absent`` hard-links a complete temp file into place (exclusive
create where hard links are unsupported). Compare-and-swap holds an exclusive ``flock`` on a hidden
sibling ``.<name>.lock``, so it is exact across processes on one host; the version is the SHA-256 of
the content.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from typing import IO

from fsspec.implementations.local import LocalFileSystem

from operators.errors import StorageError
from operators.io.storage.base import StorageSpec
from operators.io.storage.generic import FsspecStorage

_LOCAL_FS = LocalFileSystem()
_NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK)


def _fsync_dir(directory: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _sync(fh: IO[bytes]) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def current_umask() -> int:
    """The process umask (read from /proc where possible; ``os.umask`` round-trip otherwise)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a newly written file, as ``open()`` would create it: 0o666 less the umask (0o644 usually)."""
    return 0o666 & ~current_umask()


def make_public_dir(path: str | os.PathLike[str]) -> None:
    """Give a ``tempfile.mkdtemp`` directory (created 0o700) the mode ``mkdir`` would: 0o777 less the umask,
    so outputs renamed into place are readable by other users (a trainer running as another user)."""
    os.chmod(path, 0o777 & ~current_umask())


def _open_temp(path: str) -> tuple[IO[bytes], str]:
    """A new hidden temp file beside ``path`` (creating the directory), open for writing, with the mode a
    plain ``open()`` would give the final file (``mkstemp`` alone creates 0o600)."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.tmp-")
    try:
        os.fchmod(fd, file_mode())
    except OSError:
        os.close(fd)
        os.unlink(tmp)
        raise
    return os.fdopen(fd, "wb"), tmp


def _maybe_disk_full(path: str, fh: IO[bytes], data: bytes) -> None:
    """Chaos hook (`INFLUMIX_FAULT_ENOSPC=<path substring>:<marker file>`): once per marker, write half
    of ``data`` and fail with ENOSPC, as a full disk would (fault-matrix tests)."""
    spec = os.environ.get("INFLUMIX_FAULT_ENOSPC")
    if not spec:
        return
    needle, marker = spec.split(":", 1)
    if needle not in path or os.path.exists(marker):
        return
    with open(marker, "w") as out:
        out.write(path + "\n")
    fh.write(data[: len(data) // 2])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


def _link_exclusive(tmp: str, path: str, data: bytes) -> bool:
    """Hard-link the complete ``tmp`` to ``path``; False if ``path`` exists. Without hard links, an
    exclusive create written in place."""
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # less the umask
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        _sync(fh)
    return True


class LocalStorage(FsspecStorage):
    """This machine's file system."""

    is_local = True

    def __init__(self, scheme: str, spec: StorageSpec) -> None:
        super().__init__(scheme, spec, _LOCAL_FS)

    def path(self, uri: str) -> str:
        """The absolute path (``file://`` dropped, ``~`` expanded)."""
        return os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))

    def uri(self, path: str) -> str:
        return path

    @classmethod
    def join(cls, uri: str, *parts: str) -> str:
        """``os.path.join``."""
        return os.path.join(uri, *parts)

    def local_path(self, uri: str) -> str:
        return self.path(uri)

    @contextlib.contextmanager
    def atomic_writer(self, uri: str) -> Iterator[IO[bytes]]:
        """A hidden temp file, fsynced and renamed into place when the block exits cleanly."""
        path = self.path(uri)
        with self._wrap("writing", uri):
            fh, tmp = _open_temp(path)
        try:
            with fh:
                yield fh
                with self._wrap("writing", uri):
                    _sync(fh)
            with self._wrap("writing", uri):
                os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(os.path.dirname(path))

    def write_bytes_atomic(self, uri: str, data: bytes) -> None:
        """Temp file in the same directory + fsync + ``os.replace``."""
        data = bytes(data)
        with self._wrap("writing", uri), self.atomic_writer(uri) as fh:
            _maybe_disk_full(self.path(uri), fh, data)
            fh.write(data)

    def put_if_absent(self, uri: str, data: bytes) -> bool:
        """The full content goes to a temp file, then is hard-linked into place (``link`` fails if the
        target exists)."""
        path, data = self.path(uri), bytes(data)
        with self._wrap("creating", uri):
            fh, tmp = _open_temp(path)
            try:
                with fh:
                    _maybe_disk_full(path, fh, data)
                    fh.write(data)
                    _sync(fh)
                created = _link_exclusive(tmp, path, data)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        if created:
            _fsync_dir(os.path.dirname(path))
        return created

    @contextlib.contextmanager
    def _lock(self, path: str) -> Iterator[None]:
        """An exclusive ``flock`` on the hidden sibling ``.<name>.lock`` (held across processes)."""
        import fcntl

        directory, name = os.path.split(path)
        os.makedirs(directory, exist_ok=True)
        fd = os.open(os.path.join(directory, f".{name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def check_reachable(self, uri: str) -> None:
        """The nearest existing ancestor of ``uri`` must be a directory."""
        path = probe = self.path(uri)
        while not os.path.exists(probe) and os.path.dirname(probe) != probe:
            probe = os.path.dirname(probe)
        if not os.path.isdir(probe) and probe != path:
            raise StorageError(f"local path {uri}: ancestor {probe} is not a directory")
