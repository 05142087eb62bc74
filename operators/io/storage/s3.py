"""``s3://`` and ``s3a://`` through s3fs, with the :class:`StorageSpec` endpoint, retries and timeouts.

One PUT is atomic (objects become visible whole). Conditional writes are native: ``If-None-Match: *``
creates, ``If-Match: <ETag>`` replaces or deletes, so they are exact across processes and hosts.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import IO, Any

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from operators.errors import StorageError
from operators.io.storage.base import Storage, StorageNotFoundError, StorageSpec

_PRECONDITION_CODES = ("PreconditionFailed", "412", "ConditionalRequestConflict")


def _make_s3fs(spec: StorageSpec, fast: bool) -> Any:
    """An s3fs filesystem; ``fast`` caps retries and timeouts for reachability checks."""
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
    fs = s3fs.S3FileSystem(anon=spec.anon, client_kwargs=client_kwargs, config_kwargs=config_kwargs,
                           use_listings_cache=False, skip_instance_cache=True)
    fs.retries = retries + 1  # s3fs-level attempts (body read errors, throttling)
    return fs


def _is_precondition_failure(exc: BaseException) -> bool:
    """True if ``exc`` (or its cause/context chain) is a failed S3 precondition (412/409)."""
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
            if code in _PRECONDITION_CODES or status in (412, 409):
                return True
        cur = cur.__cause__ or cur.__context__
    return False


async def _get_versioned(fs: Any, bucket: str, key: str) -> tuple[bytes, str]:
    resp = await fs._call_s3("get_object", Bucket=bucket, Key=key)
    body = resp["Body"]
    try:
        data = await body.read()
    finally:
        body.close()
    return bytes(data), str(resp["ETag"])


class S3Storage(Storage):
    """An S3 API (AWS, MinIO, moto, ...) at ``spec.endpoint_url``; the version is the ETag."""

    wrappable = (OSError, BotoCoreError, ClientError, aiohttp.ClientError)

    def __init__(self, scheme: str, spec: StorageSpec) -> None:
        super().__init__(scheme, spec, _make_s3fs(spec, fast=False))
        self._fast_fs: Any = None
        self._fast_lock = threading.Lock()

    def path(self, uri: str) -> str:
        """``bucket/key``."""
        return uri.split("://", 1)[1] if "://" in uri else uri

    def uri(self, path: str) -> str:
        return f"s3://{path}"

    @property
    def endpoint(self) -> str:
        return self.spec.endpoint_url or "default AWS endpoint"

    def where(self, uri: str) -> str:
        return f"{uri} (endpoint {self.endpoint})"

    def _bucket_key(self, uri: str) -> tuple[str, str]:
        bucket, _, key = self.path(uri).partition("/")
        return bucket, key

    def read_many(self, uris: list[str]) -> dict[str, bytes | StorageError]:
        """One concurrent batch of GETs; failures are returned per URI."""
        if not uris:
            return {}
        with self._wrap("reading", uris[0]):
            got = self.fs.cat([self.path(u) for u in uris], on_error="return")
        out: dict[str, bytes | StorageError] = {}
        for uri in uris:
            value = got.get(self.path(uri), FileNotFoundError(uri))
            try:
                if isinstance(value, BaseException):
                    with self._wrap("reading", uri):
                        raise value
                out[uri] = bytes(value)
            except StorageError as exc:
                out[uri] = exc
        return out

    def write_bytes_atomic(self, uri: str, data: bytes) -> None:
        """A single PUT."""
        with self._wrap("writing", uri):
            self.fs.pipe_file(self.path(uri), bytes(data))

    @contextlib.contextmanager
    def atomic_writer(self, uri: str) -> Iterator[IO[bytes]]:
        """A (multipart) upload completed when the block exits cleanly and aborted otherwise."""
        with self._wrap("writing", uri):
            fh = self.fs.open(self.path(uri), "wb")
        try:
            yield fh
        except BaseException:
            fh.discard()  # abort the multipart upload; nothing becomes visible
            fh.closed = True
            raise
        with self._wrap("writing", uri):
            fh.close()

    def makedirs(self, uri: str) -> None:
        """A no-op: prefixes need no creation."""

    def put_if_absent(self, uri: str, data: bytes) -> bool:
        """A conditional PUT with ``If-None-Match: *``."""
        return self._conditional("creating", uri, "put_object", Body=bytes(data), IfNoneMatch="*")

    def read_versioned(self, uri: str) -> tuple[bytes, str] | None:
        """One GET returning the body and its ETag."""
        from fsspec.asyn import sync

        try:
            with self._wrap("reading", uri):
                return sync(self.fs.loop, _get_versioned, self.fs, *self._bucket_key(uri))
        except StorageNotFoundError:
            return None

    def put_if_match(self, uri: str, data: bytes, version: str) -> bool:
        """A PUT with ``If-Match: version``."""
        return self._conditional("updating", uri, "put_object", Body=bytes(data), IfMatch=version)

    def delete_if_match(self, uri: str, version: str) -> bool:
        """A DELETE with ``If-Match: version``."""
        return self._conditional("deleting", uri, "delete_object", IfMatch=version)

    def _conditional(self, verb: str, uri: str, call: str, **args: Any) -> bool:
        """``call`` with its precondition; False when the precondition fails (or, for If-Match, the
        object is missing)."""
        bucket, key = self._bucket_key(uri)
        try:
            with self._wrap(verb, uri):
                self.fs.call_s3(call, Bucket=bucket, Key=key, **args)
        except StorageError as exc:
            missing = isinstance(exc, StorageNotFoundError) and "IfMatch" in args
            if missing or _is_precondition_failure(exc):
                return False
            raise
        return True

    def check_reachable(self, uri: str) -> None:
        """The endpoint answers and the bucket exists (short timeouts, at most one retry)."""
        bucket = self.path(uri).split("/", 1)[0]
        if not bucket:
            raise StorageError(f"{uri}: no bucket name in the s3:// URI")
        with self._fast_lock:
            if self._fast_fs is None:
                self._fast_fs = _make_s3fs(self.spec, fast=True)
        try:
            self._fast_fs.call_s3("head_bucket", Bucket=bucket)
        except FileNotFoundError as exc:
            raise StorageNotFoundError(
                f"bucket {bucket!r} for {uri} does not exist at S3 endpoint {self.endpoint}") from exc
        except PermissionError as exc:
            raise StorageError(f"access denied to bucket {bucket!r} for {uri} at S3 endpoint "
                               f"{self.endpoint} (check AWS credentials): {exc}") from exc
        except self.wrappable as exc:
            raise StorageError(f"S3 endpoint {self.endpoint} is unreachable or failed for bucket "
                               f"{bucket!r} ({uri}): {exc or type(exc).__name__}") from exc
