"""The same storage contract on a local directory, ``memory://`` and a real S3 API (moto server)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import fsspec
import pytest

from operators.io.storage import StorageSpec


@pytest.fixture(params=["local", "memory", "s3"])
def where(request: pytest.FixtureRequest, tmp_path) -> Iterator[tuple[StorageSpec | None, str]]:
    """(spec, root URI) on a local temp dir, a fresh ``memory://`` root or a fresh S3 bucket."""
    if request.param == "local":
        yield None, str(tmp_path / "root")
    elif request.param == "memory":
        name = f"influmix-test-{uuid.uuid4().hex[:12]}"
        yield None, f"memory://{name}"
        memory = fsspec.filesystem("memory")
        if memory.exists(f"/{name}"):
            memory.rm(f"/{name}", recursive=True)
    else:
        yield request.getfixturevalue("s3_storage")
