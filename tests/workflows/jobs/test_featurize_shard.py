"""Per-shard featurization: identical features from different workers; Adam-aware wiring."""

from __future__ import annotations

import numpy as np
import pytest
import ray

from operators.features import datastore
from tests.workflows.helpers import fast_config
from workflows.jobs.featurize_shard import ShardFeaturizer
from workflows.run.plan import run_root
from workflows.stages.featurize import featurize_job
from workflows.mixture_refresh import resolve_model_uri
from workflows.run.plan import build_plan
from tests.fixtures.readers import read_features, read_shard
from workflows.jobs.aggregate_shard import iter_shard_feature_batches


@ray.remote(num_gpus=1, num_cpus=1)
def _featurize_on_worker(cfg_data: dict, model_uri: str, shard_index: int) -> dict:
    from workflows.config import RunConfig

    cfg = RunConfig.model_validate(cfg_data)
    worker = ShardFeaturizer(featurize_job(cfg, model_uri, run_root(cfg)), "cpu", f"gpu-{ray.get_gpu_ids()}")
    task = build_plan(cfg).corpus_tasks()[shard_index]
    record = worker.process(task)
    table = read_features(record.output_uri)
    return {"gpu_ids": [str(g) for g in ray.get_gpu_ids()], "ids": table.column("id").to_pylist(),
            "features": datastore.features_to_numpy(table), "fingerprint": worker.fingerprint}


DENSE = ["featurize.projection.kind=dense", "featurize.projection.dim=256"]


@pytest.mark.slow
@pytest.mark.parametrize("projection", [[], DENSE], ids=["kronecker", "dense"])
def test_two_workers_produce_identical_features(ray_cluster, model_cache, tmp_path, projection):
    cfgs = [fast_config(str(tmp_path / f"out{i}"), model_cache, "run_id=same", *projection) for i in range(2)]
    model_uri = resolve_model_uri(cfgs[0])
    a, b = ray.get([_featurize_on_worker.remote(c.model_dump(mode="json"), model_uri, 2) for c in cfgs])
    assert a["gpu_ids"] != b["gpu_ids"], "the two workers should sit on different (logical) GPUs"
    assert a["fingerprint"] == b["fingerprint"]
    assert a["ids"] == b["ids"] and len(a["ids"]) > 0
    assert np.array_equal(a["features"], b["features"])  # bitwise, not approximately


@pytest.mark.slow
def test_adam_aware_features_use_checkpoint_moments(model_cache, tmp_path):
    plain_cfg = fast_config(str(tmp_path / "plain"), model_cache, "run_id=plain")
    adam_cfg = fast_config(str(tmp_path / "adam"), model_cache, "run_id=adam", "featurize.adam_aware=true")
    model_uri = resolve_model_uri(plain_cfg)
    task = build_plan(plain_cfg).corpus_tasks()[0]
    plain = ShardFeaturizer(featurize_job(plain_cfg, model_uri, run_root(plain_cfg)), "cpu", "w")
    adam = ShardFeaturizer(featurize_job(adam_cfg, model_uri, run_root(adam_cfg)), "cpu", "w")
    assert adam.describe()["featurizer"]["adam_aware"] is True
    assert plain.fingerprint != adam.fingerprint
    fa = datastore.features_to_numpy(read_features(adam.process(task).output_uri))
    fp = datastore.features_to_numpy(read_features(plain.process(task).output_uri))
    assert fa.shape == fp.shape and np.isfinite(fa).all()
    # Γ = m'/sqrt(v'+eps) is a different (normalised) gradient: features change but stay correlated
    cos = (fa * fp).sum(1) / (np.linalg.norm(fa, axis=1) * np.linalg.norm(fp, axis=1))
    assert not np.allclose(fa, fp)
    assert np.median(cos) > 0.0
    # LESS: target (validation) gradients stay plain SGD gradients, in the same projected space
    target = build_plan(plain_cfg).target_tasks()[0]
    ta = read_features(adam.process(target).output_uri)
    tp = read_features(plain.process(target).output_uri)
    assert ta.num_rows > 0 and ta.column("id").equals(tp.column("id"))
    assert np.array_equal(datastore.features_to_numpy(ta), datastore.features_to_numpy(tp))
    assert datastore.projector_fingerprint(ta) == datastore.projector_fingerprint(tp)


def _true_untruncated_tokens(tokenizer, table) -> dict[str, int]:
    out: dict[str, int] = {}
    lengths = [len(x) for x in tokenizer(table.column("text").to_pylist(), verbose=False)["input_ids"]]
    for d, n in zip(table.column("domain").to_pylist(), lengths):
        out[d] = out.get(d, 0) + n
    return out


@pytest.mark.parametrize("cap", [None, 3])
def test_records_count_the_whole_shard_untruncated(model_cache, tmp_path, cap):
    from operators.io.corpus import ShardRef

    extra = ["sampling.rate=1.0", "featurize.max_length=12", "featurize.part_rows=4", f"run_id=stats{cap}"]
    if cap is not None:
        extra.append(f"sampling.max_per_domain={cap}")
    cfg = fast_config(str(tmp_path / "out"), model_cache, *extra)
    task = build_plan(cfg).corpus_tasks()[0]
    worker = ShardFeaturizer(featurize_job(cfg, resolve_model_uri(cfg), run_root(cfg)), "cpu", "w")
    record = worker.process(task)
    ref = ShardRef(uri=task.uri, format=task.format, shard_id=task.shard_id)
    from workflows.run.plan import spec_for_task

    whole = read_shard(ref, spec_for_task(cfg, task), cfg.storage)
    true_tokens = _true_untruncated_tokens(worker.tokenizer, whole)
    rows = {d: whole.column("domain").to_pylist().count(d) for d in true_tokens}
    assert record.domain_rows_all == rows
    texts = whole.column("text").to_pylist()
    assert sum(record.domain_bytes_all.values()) == sum(len(t.encode()) for t in texts)
    # parts split by rows; the record lists them and nothing is lost or duplicated
    assert record.part_rows and all(n <= 4 for n in record.part_rows)
    assert sum(record.part_rows) == record.n_examples and len(record.parts) == len(record.part_rows)
    assert len(record.parts) > 1 or record.n_examples <= 4
    batches = iter_shard_feature_batches(worker.root, task.shard_id, None, ["id"])
    ids = [i for b in batches for i in b.column("id").to_pylist()]
    assert len(ids) == len(set(ids)) == record.n_examples
    est = datastore.estimated_tokens_available([record])
    for d, n in true_tokens.items():
        assert record.domain_tokens[d] < record.domain_tokens_untruncated[d]  # truncation at 12 tokens
        if cap is None:  # everything featurized: the estimate is the exact untruncated count
            assert record.domain_tokens_untruncated[d] == n and est[d] == n
        else:
            assert record.domain_counts[d] <= cap and 0.6 * n < est[d] < 1.6 * n


def test_out_of_memory_batches_are_split_without_changing_features(model_cache, tmp_path, monkeypatch):
    import torch

    cfg = fast_config(str(tmp_path / "a"), model_cache, "run_id=oom", "featurize.batch_size=16")
    ref_cfg = fast_config(str(tmp_path / "b"), model_cache, "run_id=oom")
    model_uri = resolve_model_uri(cfg)
    task = build_plan(cfg).corpus_tasks()[0]
    worker = ShardFeaturizer(featurize_job(cfg, model_uri, run_root(cfg)), "cpu", "w")
    real = worker.featurizer.featurize
    calls: list[int] = []

    def limited(input_ids, attention_mask):  # a device that only fits 5 rows
        calls.append(input_ids.shape[0])
        if input_ids.shape[0] > 5:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(input_ids, attention_mask)

    monkeypatch.setattr(worker.featurizer, "featurize", limited)
    record = worker.process(task)
    assert worker.max_rows is not None and worker.max_rows <= 5
    assert max(c for c in calls[-3:]) <= 5  # later batches start at the size that fits
    reference = ShardFeaturizer(featurize_job(ref_cfg, model_uri, run_root(ref_cfg)), "cpu", "w").process(task)
    got = read_features(record.output_uri)
    want = read_features(reference.output_uri)
    assert got.column("id").to_pylist() == want.column("id").to_pylist()
    np.testing.assert_allclose(datastore.features_to_numpy(got), datastore.features_to_numpy(want),
                               rtol=1e-4, atol=1e-6)


def test_nonfinite_features_are_skipped_and_counted(model_cache, tmp_path, monkeypatch):
    import torch

    from workflows.run.integrity import skipped_examples

    cfg = fast_config(str(tmp_path / "out"), model_cache, "run_id=nan")
    plan = build_plan(cfg)
    task = plan.corpus_tasks()[0]
    worker = ShardFeaturizer(featurize_job(cfg, resolve_model_uri(cfg), plan.root, plan.store), "cpu", "w")
    real = worker.featurizer.featurize
    calls = []

    def poisoned(ids, mask):
        fb = real(ids, mask)
        if not calls:
            fb.features[0, 3] = torch.nan  # first example: NaN feature
            fb.losses[1] = torch.inf  # second example: infinite loss
        calls.append(1)
        return fb

    monkeypatch.setattr(worker.featurizer, "featurize", poisoned)
    record = worker.process(task)
    table = read_features(record.output_uri)
    assert record.skipped_nonfinite == 2 and record.n_examples == table.num_rows
    assert np.isfinite(datastore.features_to_numpy(table)).all()
    assert np.isfinite(table.column("loss").to_numpy()).all()
    assert skipped_examples(cfg, plan) == {"nonfinite_features": 2}


def test_nonfinite_kfac_sums_are_left_out_of_the_factors(model_cache, tmp_path, monkeypatch):
    """A piece whose K-FAC sums hold NaN (a poisoned batch) is left out whole: every layer's factors
    stay finite and count the same examples."""
    import torch

    cfg = fast_config(str(tmp_path / "out"), model_cache, "run_id=kfacnan", "influence.preconditioner=kfac")
    task = build_plan(cfg).corpus_tasks()[0]
    worker = ShardFeaturizer(featurize_job(cfg, resolve_model_uri(cfg), run_root(cfg)), "cpu", "w")
    real = worker.featurizer.featurize
    poisoned_tokens, all_tokens = [], []

    def poisoned(ids, mask):
        fb = real(ids, mask)
        name = next(iter(fb.kfac))
        all_tokens.append(fb.kfac[name][2])
        if not poisoned_tokens:
            fb.kfac[name][0][0, 0] = torch.nan
            poisoned_tokens.append(fb.kfac[name][2])
        return fb

    monkeypatch.setattr(worker.featurizer, "featurize", poisoned)
    worker.process(task)
    arrays = datastore.read_npz(datastore.kfac_uri(worker.root, task.shard_id))
    assert all(np.isfinite(v).all() for v in arrays.values())
    counts = {int(v) for k, v in arrays.items() if k.endswith("|N")}
    assert len(all_tokens) > 1 and counts == {sum(all_tokens) - poisoned_tokens[0]}
