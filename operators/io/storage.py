"""One storage layer for local paths and ``s3://`` URIs (via s3fs), with atomic writes.

Every public function takes a URI (a local path, ``file://`` path or ``s3://bucket/key``) and an
optional :class:`StorageSpec`; low-level errors are wrapped into :class:`StorageError` subclasses
whose message names the URI (and the S3 endpoint for remote URIs).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import posixpath
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import fsspec
from botocore.exceptions import BotoCoreError, ClientError
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, ConfigDict, Field, field_validator

from operators.errors import StorageError
from operators.io.secrets import has_userinfo

_S3_SCHEMES = ("s3://", "s3a://")
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


_DEFAULT_SPEC = StorageSpec()
_FS_CACHE: dict[tuple[int, StorageSpec, bool], Any] = {}
_FS_LOCK = threading.Lock()
_LOCAL_FS = LocalFileSystem()
_WRAPPABLE = (OSError, BotoCoreError, ClientError, aiohttp.ClientError)


def is_remote(uri: str) -> bool:
    """True for ``s3://`` (and ``s3a://``) URIs."""
    return uri.startswith(_S3_SCHEMES)


def _spec(spec: StorageSpec | None) -> StorageSpec:
    return spec if spec is not None else _DEFAULT_SPEC


def _make_s3fs(spec: StorageSpec, fast: bool) -> Any:
    import s3fs

    retries = min(spec.retries, 1) if fast else spec.retries
    connect = min(spec.connect_timeout_s, 3.0) if fast else spec.connect_timeout_s
    read = min(spec.read_timeout_s, 10.0) if fast else spec.read_timeout_s
    client_kwargs: dict[str, Any] = {}
    if spec.endpoint_url:
        client_kwargs["endpoint_url"] = spec.endpoint_url
    if spec.region:
        client_kwargs["region_name"] = spec.region
    config_kwargs = {
        "connect_timeout": connect,
        "read_timeout": read,
        "retries": {"total_max_attempts": retries + 1, "mode": "standard"},
    }
    fs = s3fs.S3FileSystem(
        anon=spec.anon,
        client_kwargs=client_kwargs,
        config_kwargs=config_kwargs,
        use_listings_cache=False,
        skip_instance_cache=True,
    )
    fs.retries = retries + 1  # s3fs-level attempts (body read errors, throttling)
    return fs


def _s3fs_for(spec: StorageSpec, fast: bool = False) -> Any:
    key = (os.getpid(), spec, fast)
    with _FS_LOCK:
        fs = _FS_CACHE.get(key)
        if fs is None:
            fs = _make_s3fs(spec, fast)
            _FS_CACHE[key] = fs
        return fs


def clear_filesystem_cache() -> None:
    """Forget cached S3 filesystem instances (e.g. after credentials or endpoints changed)."""
    with _FS_LOCK:
        _FS_CACHE.clear()


def _strip_s3(uri: str) -> str:
    for scheme in _S3_SCHEMES:
        if uri.startswith(scheme):
            return uri[len(scheme) :]
    return uri


def _local_path(uri: str) -> str:
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return os.path.abspath(os.path.expanduser(uri))


def filesystem_for(
    uri: str, spec: StorageSpec | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(filesystem, path)``: s3fs + ``bucket/key`` for s3://, else local + absolute path."""
    if is_remote(uri):
        return _s3fs_for(_spec(spec)), _strip_s3(uri)
    if "://" in uri and not uri.startswith("file://"):
        raise StorageError(f"unsupported URI scheme in {uri!r} (use a local path or s3://)")
    return _LOCAL_FS, _local_path(uri)


def join(uri: str, *parts: str) -> str:
    """Join path components onto a URI (``/`` separators for s3://)."""
    if is_remote(uri):
        out = uri.rstrip("/")
        for part in parts:
            part = part.strip("/")
            if part:
                out = f"{out}/{part}"
        return out
    return os.path.join(uri, *parts)


def _to_uri(original: str, path: str) -> str:
    return f"s3://{path}" if is_remote(original) else path


def _where(uri: str, spec: StorageSpec | None) -> str:
    if not is_remote(uri):
        return uri
    endpoint = _spec(spec).endpoint_url or "default AWS endpoint"
    return f"{uri} (endpoint {endpoint})"


@contextlib.contextmanager
def _wrap(action: str, uri: str, spec: StorageSpec | None) -> Iterator[None]:
    """Translate low-level I/O errors into StorageError naming the URI and endpoint."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError as exc:
        raise StorageNotFoundError(f"{action} {_where(uri, spec)}: not found ({exc})") from exc
    except _WRAPPABLE as exc:
        detail = str(exc) or type(exc).__name__
        raise StorageError(f"{action} {_where(uri, spec)} failed: {detail}") from exc


def exists(uri: str, spec: StorageSpec | None = None) -> bool:
    """True if a file/object (or directory/prefix) exists at ``uri``."""
    fs, path = filesystem_for(uri, spec)
    with _wrap("checking", uri, spec):
        return bool(fs.exists(path))


def read_bytes(uri: str, spec: StorageSpec | None = None) -> bytes:
    """Read a whole file/object."""
    fs, path = filesystem_for(uri, spec)
    with _wrap("reading", uri, spec):
        if not is_remote(uri):
            with open(path, "rb") as fh:
                return fh.read()
        return bytes(fs.cat_file(path))


def read_text(uri: str, spec: StorageSpec | None = None, encoding: str = "utf-8") -> str:
    """Read a whole file as text."""
    data = read_bytes(uri, spec)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise StorageError(f"reading {uri}: not valid {encoding} text ({exc})") from exc


def read_json(uri: str, spec: StorageSpec | None = None) -> Any:
    """Read and parse a JSON document."""
    text = read_text(uri, spec)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise StorageError(f"reading {uri}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc


def read_many(uris: list[str], spec: StorageSpec | None = None) -> dict[str, bytes | StorageError]:
    """Read several files (concurrently on S3); failures are returned per URI, not raised."""
    out: dict[str, bytes | StorageError] = {}
    remote = [u for u in uris if is_remote(u)]
    got: dict[str, Any] = {}
    if remote:
        with _wrap("reading", remote[0], spec):
            got = _s3fs_for(_spec(spec)).cat([_strip_s3(u) for u in remote], on_error="return")
    for uri in uris:
        try:
            if not is_remote(uri):
                out[uri] = read_bytes(uri, spec)
                continue
            value = got.get(_strip_s3(uri), FileNotFoundError(uri))
            if isinstance(value, BaseException):
                with _wrap("reading", uri, spec):
                    raise value
            out[uri] = bytes(value)
        except StorageError as exc:
            out[uri] = exc
    return out


def _has_glob(path: str) -> bool:
    return any(ch in path for ch in _GLOB_CHARS)


def _is_temp(path: str) -> bool:
    return posixpath.basename(path.replace(os.sep, "/")).startswith(".")


def list_file_infos(
    uri_or_glob: str, suffixes: tuple[str, ...] | None = None, spec: StorageSpec | None = None
) -> list[tuple[str, int | None]]:
    """Like :func:`list_files` but returns ``(uri, size_bytes)`` pairs."""
    fs, path = filesystem_for(uri_or_glob, spec)
    found: dict[str, int | None] = {}
    with _wrap("listing", uri_or_glob, spec):
        if _has_glob(path):
            roots = sorted(fs.glob(path))
        elif fs.exists(path):
            roots = [path]
        else:
            roots = []
        for root in roots:
            if fs.isdir(root):
                for p, info in fs.find(root, detail=True).items():
                    if info.get("type", "file") == "file" and not p.endswith("/"):
                        found[p] = info.get("size")
            else:
                found[root] = fs.info(root).get("size")
    out = []
    for p, size in sorted(found.items()):
        if _is_temp(p):
            continue
        if suffixes and not p.endswith(tuple(suffixes)):
            continue
        out.append((_to_uri(uri_or_glob, p), int(size) if size is not None else None))
    return out


def list_files(
    uri_or_glob: str, suffixes: tuple[str, ...] | None = None, spec: StorageSpec | None = None
) -> list[str]:
    """Sorted full URIs of files under a directory/prefix (recursive), a glob, or a single file.

    Hidden files (basename starting with ``.``, e.g. in-flight temp files) are skipped; a path
    that matches nothing yields an empty list.
    """
    return [uri for uri, _ in list_file_infos(uri_or_glob, suffixes, spec)]


def delete(uri: str, spec: StorageSpec | None = None, recursive: bool = False) -> None:
    """Delete a file (or a directory/prefix tree with ``recursive``); missing paths are ignored."""
    fs, path = filesystem_for(uri, spec)
    with _wrap("deleting", uri, spec):
        if not fs.exists(path):
            return
        if fs.isdir(path):
            if not recursive:
                raise StorageError(f"deleting {uri}: is a directory (pass recursive=True)")
            fs.rm(path, recursive=True)
        else:
            fs.rm_file(path)


def makedirs(uri: str, spec: StorageSpec | None = None) -> None:
    """Create a local directory tree; a no-op on S3 (prefixes need no creation)."""
    if is_remote(uri):
        return
    with _wrap("creating directory", uri, spec):
        os.makedirs(_local_path(uri), exist_ok=True)


def _fsync_dir(directory: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _maybe_disk_full(path: str, fh: Any, data: bytes) -> None:
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


def _write_local_temp(path: str, data: bytes) -> str:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            _maybe_disk_full(path, fh, data)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def write_bytes_atomic(uri: str, data: bytes, spec: StorageSpec | None = None) -> None:
    """Write ``data`` so readers see either the old or the complete new content, never a part.

    Local: temp file in the same directory + fsync + ``os.replace``. S3: a single PUT (objects
    only become visible whole).
    """
    fs, path = filesystem_for(uri, spec)
    with _wrap("writing", uri, spec):
        if is_remote(uri):
            fs.pipe_file(path, bytes(data))
            return
        tmp = _write_local_temp(path, bytes(data))
        try:
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(os.path.dirname(path))


def write_text_atomic(uri: str, text: str, spec: StorageSpec | None = None) -> None:
    """Atomically write UTF-8 text."""
    write_bytes_atomic(uri, text.encode("utf-8"), spec)


def write_json_atomic(uri: str, obj: Any, spec: StorageSpec | None = None) -> None:
    """Atomically write JSON (sorted keys, indent 2, trailing newline)."""
    write_text_atomic(uri, json.dumps(obj, sort_keys=True, indent=2) + "\n", spec)


def _is_precondition_failure(exc: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, FileExistsError):
            return True
        response = getattr(cur, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict") or status in (
                412,
                409,
            ):
                return True
        cur = cur.__cause__ or cur.__context__
    return False


def put_if_absent(uri: str, data: bytes, spec: StorageSpec | None = None) -> bool:
    """Create ``uri`` with ``data`` only if nothing exists there; return False if it already did.

    Local: the full content is written to a temp file, then hard-linked into place (``link``
    fails if the target exists). S3: a conditional PUT with ``If-None-Match: *``.
    """
    fs, path = filesystem_for(uri, spec)
    if is_remote(uri):
        bucket, _, key = path.partition("/")
        try:
            with _wrap("creating", uri, spec):
                fs.call_s3("put_object", Bucket=bucket, Key=key, Body=bytes(data), IfNoneMatch="*")
        except StorageError as exc:
            if _is_precondition_failure(exc):
                return False
            raise
        return True
    with _wrap("creating", uri, spec):
        tmp = _write_local_temp(path, bytes(data))
        try:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError as exc:  # filesystems without hard links: exclusive create
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                    raise
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "wb") as fh:
                    fh.write(bytes(data))
                    fh.flush()
                    os.fsync(fh.fileno())
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        _fsync_dir(os.path.dirname(path))
        return True


def check_reachable(uri: str, spec: StorageSpec | None = None) -> None:
    """Fail fast (short timeouts, at most one retry) if ``uri``'s storage cannot be used.

    For s3:// this checks the endpoint answers and the bucket exists; for local paths that the
    nearest existing ancestor is a directory.
    """
    if not is_remote(uri):
        probe = _local_path(uri)
        while not os.path.exists(probe) and os.path.dirname(probe) != probe:
            probe = os.path.dirname(probe)
        if not os.path.isdir(probe) and probe != _local_path(uri):
            raise StorageError(f"local path {uri}: ancestor {probe} is not a directory")
        return
    s = _spec(spec)
    bucket = _strip_s3(uri).split("/", 1)[0]
    endpoint = s.endpoint_url or "default AWS endpoint"
    if not bucket:
        raise StorageError(f"{uri}: no bucket name in the s3:// URI")
    fs = _s3fs_for(s, fast=True)
    try:
        fs.call_s3("head_bucket", Bucket=bucket)
    except FileNotFoundError as exc:
        raise StorageNotFoundError(
            f"bucket {bucket!r} for {uri} does not exist at S3 endpoint {endpoint}"
        ) from exc
    except PermissionError as exc:
        raise StorageError(
            f"access denied to bucket {bucket!r} for {uri} at S3 endpoint {endpoint} "
            f"(check AWS credentials): {exc}"
        ) from exc
    except _WRAPPABLE as exc:
        raise StorageError(
            f"S3 endpoint {endpoint} is unreachable or failed for bucket {bucket!r} "
            f"({uri}): {exc or type(exc).__name__}"
        ) from exc



# Conditional updates (compare-and-swap). A *version* is the S3 ETag, or the SHA-256 of a local file's
# content; local updates hold an exclusive lock on a hidden sibling `.<name>.lock` while comparing.


def _local_version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _local_lock(path: str) -> Iterator[None]:
    import fcntl

    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    fd = os.open(os.path.join(directory, f".{name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _read_local_versioned(path: str) -> tuple[bytes, str] | None:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return None
    return data, _local_version(data)


async def _s3_get_versioned(fs: Any, bucket: str, key: str) -> tuple[bytes, str]:
    resp = await fs._call_s3("get_object", Bucket=bucket, Key=key)
    body = resp["Body"]
    try:
        data = await body.read()
    finally:
        body.close()
    return bytes(data), str(resp["ETag"])


def read_versioned(uri: str, spec: StorageSpec | None = None) -> tuple[bytes, str] | None:
    """``(content, version)`` of ``uri`` read in one request, or None if it does not exist."""
    fs, path = filesystem_for(uri, spec)
    if not is_remote(uri):
        with _wrap("reading", uri, spec), _local_lock(path):
            return _read_local_versioned(path)
    from fsspec.asyn import sync

    bucket, _, key = path.partition("/")
    try:
        with _wrap("reading", uri, spec):
            return sync(fs.loop, _s3_get_versioned, fs, bucket, key)
    except StorageNotFoundError:
        return None


def put_if_match(uri: str, data: bytes, version: str, spec: StorageSpec | None = None) -> bool:
    """Replace ``uri`` with ``data`` only if its current version is ``version``; False otherwise
    (changed or deleted meanwhile). S3: a PUT with ``If-Match``; local: lock, compare, atomic replace."""
    return _if_match(uri, version, spec, "updating", "put_object", {"Body": bytes(data)},
                     lambda path: write_bytes_atomic(uri, data, spec))


def delete_if_match(uri: str, version: str, spec: StorageSpec | None = None) -> bool:
    """Delete ``uri`` only if its current version is ``version``; False otherwise."""
    return _if_match(uri, version, spec, "deleting", "delete_object", {}, os.unlink)


def _if_match(uri: str, version: str, spec: StorageSpec | None, verb: str, s3_call: str, s3_args: dict,
              apply_local: Callable[[str], object]) -> bool:
    """An S3 call with ``If-Match: version`` (False on a failed precondition or a missing object), or,
    locally, ``apply_local(path)`` under the file's lock if its content still hashes to ``version``."""
    fs, path = filesystem_for(uri, spec)
    if is_remote(uri):
        bucket, _, key = path.partition("/")
        try:
            with _wrap(verb, uri, spec):
                fs.call_s3(s3_call, Bucket=bucket, Key=key, IfMatch=version, **s3_args)
        except StorageError as exc:
            if isinstance(exc, StorageNotFoundError) or _is_precondition_failure(exc):
                return False
            raise
        return True
    with _wrap(verb, uri, spec), _local_lock(path):
        current = _read_local_versioned(path)
        if current is None or current[1] != version:
            return False
        apply_local(path)
        return True
