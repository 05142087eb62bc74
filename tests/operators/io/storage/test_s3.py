"""S3 backend on a real S3 API (moto server): endpoint in errors, fail-fast checks, s3a://, uploads."""

from __future__ import annotations

import time

import pytest

from operators.errors import StorageError
from operators.io import storage as st
from operators.io.storage import StorageSpec
from operators.io.storage.s3 import S3Storage
from tests.fixtures.s3 import free_port

pytestmark = pytest.mark.timeout(60)


def test_join_and_s3a_lists_as_s3(s3_storage) -> None:
    spec, bucket_uri = s3_storage
    assert st.join("s3://b/root/", "features", "/x.parquet") == "s3://b/root/features/x.parquet"
    bucket = bucket_uri[len("s3://"):]
    st.write_bytes_atomic(f"s3a://{bucket}/d/x.bin", b"x", spec)
    assert isinstance(st.storage_for(f"s3a://{bucket}", spec), S3Storage)
    assert st.list_files(f"s3a://{bucket}/d", None, spec) == [f"s3://{bucket}/d/x.bin"]
    assert st.read_bytes(f"s3://{bucket}/d/x.bin", spec) == b"x"
    assert st.local_path(bucket_uri, spec) is None


def test_errors_name_uri_and_endpoint(s3_storage) -> None:
    spec, bucket_uri = s3_storage
    uri = st.join(bucket_uri, "absent.json")
    with pytest.raises(StorageError, match="absent.json") as info:
        st.read_json(uri, spec)
    assert f"(endpoint {spec.endpoint_url})" in str(info.value)


def test_check_reachable_ok_and_missing_bucket(s3_storage) -> None:
    spec, bucket_uri = s3_storage
    st.check_reachable(st.join(bucket_uri, "run"), spec)
    missing = "s3://influmix-no-such-bucket/run"
    with pytest.raises(StorageError, match="influmix-no-such-bucket") as info:
        st.check_reachable(missing, spec)
    assert spec.endpoint_url in str(info.value)
    with pytest.raises(StorageError, match="no bucket name"):
        st.check_reachable("s3:///run", spec)


@pytest.mark.usefixtures("s3_server")
def test_unreachable_endpoint_fails_fast_naming_endpoint() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    spec = StorageSpec(endpoint_url=endpoint, retries=1, connect_timeout_s=1.0)
    start = time.monotonic()
    with pytest.raises(StorageError, match=endpoint.replace(".", r"\.")):
        st.check_reachable("s3://some-bucket/run", spec)
    with pytest.raises(StorageError, match=endpoint.replace(".", r"\.")):
        st.read_bytes("s3://some-bucket/run/x.json", spec)
    assert time.monotonic() - start < 20.0


def test_atomic_writer_aborts_a_multipart_upload_without_a_trace(s3_storage) -> None:
    import boto3

    spec, bucket_uri = s3_storage
    store = st.storage_for(bucket_uri, spec)
    store.fs.default_block_size = 5 << 20  # the S3 minimum part: 6 MiB writes start a multipart upload
    uri = st.join(bucket_uri, "big.bin")
    chunk = b"x" * (6 << 20)
    with pytest.raises(RuntimeError), store.atomic_writer(uri) as out:
        out.write(chunk)
        out.write(chunk)
        raise RuntimeError("source failed")
    assert not st.exists(uri, spec)
    client = boto3.client("s3", endpoint_url=spec.endpoint_url, region_name=spec.region)
    assert client.list_multipart_uploads(Bucket=bucket_uri[len("s3://"):]).get("Uploads", []) == []
    with store.atomic_writer(uri) as out:
        out.write(chunk)
        out.write(b"tail")
    assert st.list_file_infos(uri, None, spec) == [(uri, len(chunk) + 4)]


def test_endpoint_with_credentials_is_refused() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="must not embed credentials"):
        StorageSpec(endpoint_url="http://AKIA:secretvalue@minio:9000")
