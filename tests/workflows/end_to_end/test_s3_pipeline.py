"""Corpus and outputs on S3 (a real S3 API: moto server on 127.0.0.1), plus bad-input errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from operators.features import datastore

from operators.io import storage
from operators.errors import CorpusError, StorageError
from operators.manifest.schema import parse_manifest
from tests.workflows.helpers import fast_config
from workflows.assets import default_corpus_dir
from workflows.mixture_refresh import run_mixture_refresh
from workflows.run.plan import build_plan, plan_completions
from tests.fixtures.readers import read_features

pytestmark = pytest.mark.slow


def _upload_corpus(bucket: str, spec, *, corrupt: str | None = None) -> str:
    prefix = storage.join(bucket, "corpus")
    for path in sorted(Path(default_corpus_dir()).glob("*.parquet")):
        data = path.read_bytes()
        if corrupt and corrupt in path.name:
            data = data[: len(data) // 2]
        storage.write_bytes_atomic(storage.join(prefix, path.name), data, spec)
    return prefix


def _s3_config(ray_cluster, model_cache, spec, bucket, corpus, run_id):
    cfg = fast_config(storage.join(bucket, "out"), model_cache, f"run_id={run_id}",
                      f"storage.endpoint_url={spec.endpoint_url}", f"storage.region={spec.region}",
                      "storage.retries=2")
    return cfg.model_copy(update={"corpus": cfg.corpus.model_copy(update={"paths": [corpus + "/"]})})


KEY_ID, SECRET = "AKIAINFLUMIXLEAKTEST", "sEcReT/influmix+leak-test-0123456789"


def test_corpus_and_outputs_on_s3_without_leaking_credentials(ray_cluster, model_cache, s3_storage, monkeypatch,
                                                              capfd, caplog):
    from operators.io.storage import clear_filesystem_cache

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)  # distinctive driver credentials (moto accepts any)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    clear_filesystem_cache()
    spec, bucket = s3_storage
    corpus = _upload_corpus(bucket, spec)
    cfg = _s3_config(ray_cluster, model_cache, spec, bucket, corpus, "s3-run")
    result = run_mixture_refresh(cfg)
    # no credential in any output object (config.yaml, plan, report.*, manifests, pointer, lease), nor in logs
    outputs = storage.list_files(storage.join(bucket, "out"), None, spec)
    assert any(u.endswith("config.yaml") for u in outputs) and any(u.endswith("report.md") for u in outputs)
    for uri, data in storage.read_many(outputs, spec).items():
        assert KEY_ID.encode() not in data and SECRET.encode() not in data, uri
    logs = capfd.readouterr()
    for text in (logs.out, logs.err, caplog.text):
        assert KEY_ID not in text and SECRET not in text
    assert result.manifest_uri.startswith(bucket)
    manifest = parse_manifest(storage.read_bytes(result.manifest_uri, spec))
    assert abs(sum(d.weight for d in manifest.domains) - 1) < 1e-6
    plan = build_plan(cfg)
    assert all(t.uri.startswith("s3://") for t in plan.corpus_tasks())
    done = plan_completions(plan, spec)
    assert set(done) == {t.shard_id for t in plan.tasks}
    table = read_features(done[plan.corpus_tasks()[0].shard_id].output_uri, spec)
    assert table.schema.field("features").type.list_size == datastore.feature_dim(table)
    latest = storage.read_json(storage.join(bucket, "out", "manifests", "default", "latest.json"), spec)
    assert latest["manifest_uri"] == result.manifest_uri


def test_corrupt_shard_fails_in_preflight_and_a_fixed_shard_starts_clean(ray_cluster, model_cache, s3_storage):
    """A truncated Parquet shard is caught by preflight (its footer is unreadable) before any model runs,
    and nothing is recorded under the run root, so the same run id starts cleanly once it is fixed."""
    spec, bucket = s3_storage
    corpus = _upload_corpus(bucket, spec, corrupt="legal-0001")
    cfg = _s3_config(ray_cluster, model_cache, spec, bucket, corpus, "s3-corrupt")
    with pytest.raises(CorpusError, match=r"legal-0001.*corrupt or unreadable Parquet"):
        run_mixture_refresh(cfg)
    plan = build_plan(cfg)
    assert not storage.exists(storage.join(plan.root, "plan.json"), spec)
    assert plan_completions(plan, spec) == {}


def test_unreachable_s3_is_a_clear_error(model_cache, tmp_path):
    cfg = fast_config("s3://no-bucket/out", model_cache, "storage.endpoint_url=http://127.0.0.1:9",
                      "storage.retries=0")
    with pytest.raises(StorageError, match="127.0.0.1:9"):
        run_mixture_refresh(cfg)
