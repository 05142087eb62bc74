"""Map-reduce aggregation on a real local Ray cluster against an in-memory reference."""

from __future__ import annotations

import glob
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from operators.features import datastore
from operators.errors import CorpusError
from workflows.stages.aggregate import aggregate_influence
from workflows.jobs.aggregate_shard import score_shard_uri
from workflows.config import load_config
from workflows.run.plan import Plan, ShardTask

DOMAINS = ["code", "web", "books"]
TARGETS = ["target_mixed", "val_code", "val_docs"]


def _write(root: str, shard_id: str, ids, domains, n_tokens, feats) -> None:
    table = datastore.features_table(list(ids), list(domains), n_tokens, np.zeros(len(ids)), feats, "fp")
    datastore.write_feature_shard(datastore.legacy_feature_uri(root, shard_id), table)


def _synth(root: str, dim: int = 16, shards: int = 5, rows: int = 300, seed: int = 0) -> tuple[Plan, dict]:
    rng = np.random.default_rng(seed)
    tasks, data = [], {"feats": [], "domains": [], "ids": [], "tfeats": [], "tnames": [], "ttok": [], "ntok": []}
    shift = rng.normal(size=(len(DOMAINS), dim))
    for s in range(shards):
        doms = rng.choice(DOMAINS + ["other"], size=rows)
        feats = (rng.normal(size=(rows, dim)) + shift[[DOMAINS.index(d) if d in DOMAINS else 0 for d in doms]])
        ids = [f"s{s}-{i}" for i in range(rows)]
        ntok = rng.integers(5, 50, size=rows)
        _write(root, f"c{s}", ids, doms, ntok, feats.astype(np.float32))
        data["ntok"].append(ntok.astype(np.float64))
        tasks.append(ShardTask(shard_id=f"c{s}", uri=f"c{s}.parquet", format="parquet", role="corpus"))
        data["feats"].append(feats.astype(np.float32).astype(np.float64))
        data["domains"].append(doms)
        data["ids"] += ids
    for v, name in enumerate(TARGETS):
        tfeats = rng.normal(size=(40, dim)).astype(np.float32)
        ttok = rng.integers(2, 100, size=40)
        _write(root, f"t-{name}", [f"{name}-{i}" for i in range(40)], [name] * 40, ttok, tfeats)
        tasks.append(ShardTask(shard_id=f"t-{name}", uri="x", format="parquet", role="target", target_name=name))
        data["tfeats"].append(tfeats.astype(np.float64))
        data["ttok"].append(ttok.astype(np.float64))
    return Plan(run_id="synth", root=root, tasks=tuple(tasks)), data


def _cfg(out: str, *extra: str):
    return load_config("default", [f"output_uri={out}", "influence.bootstrap=50", *extra])


def _reference(data: dict, damping: float, by_tokens: bool = True) -> np.ndarray:
    """Gauss-Newton directions from token-weighted target means, then per domain the token-weighted
    (default) or plain mean of the scores."""
    phi = np.concatenate(data["feats"])
    doms = np.concatenate(data["domains"])
    h = phi.T @ phi / len(phi)
    t = np.stack([(f * n[:, None]).sum(0) / n.sum() for f, n in zip(data["tfeats"], data["ttok"])])
    lam = damping * np.trace(h) / h.shape[0]
    d = np.linalg.solve(h + lam * np.eye(h.shape[0]), t.T).T
    n = np.concatenate(data["ntok"]) if by_tokens else np.ones(len(phi))
    return np.stack([np.average(phi[doms == k] @ d.T, axis=0, weights=n[doms == k]) for k in DOMAINS])


def test_distributed_matches_reference_and_is_worker_count_invariant(ray_cluster, tmp_path):
    plan, data = _synth(str(tmp_path / "run"))
    seen: list[np.ndarray] = []

    def extra(gi: np.ndarray, se: np.ndarray | None) -> np.ndarray:
        seen.append(gi)
        assert se is not None and se.shape == gi.shape and np.all(se > 0)  # bootstrap standard errors
        return gi @ np.ones(gi.shape[1])

    two = aggregate_influence(_cfg(str(tmp_path), "cluster.num_workers=2"), plan, DOMAINS, extra=extra)
    np.testing.assert_allclose(two.gi, _reference(data, 0.1), rtol=1e-9, atol=1e-12)
    assert two.counts == {d: int((np.concatenate(data["domains"]) == d).sum()) for d in DOMAINS}
    assert seen and all(g.shape == (3, 3) for g in seen)  # extra gets each replicate's raw GI
    boot = np.stack(seen)
    np.testing.assert_allclose(two.gi_se, boot.std(axis=0, ddof=1), rtol=1e-12)  # se = replicate spread
    assert two.bootstrap["extra_low"].shape == (3,)
    assert np.all(two.bootstrap["gi_low"] <= two.gi) and np.all(two.gi <= two.bootstrap["gi_high"])
    # a fresh output root, one worker: the same bits (per-shard statistics folded in shard order)
    plan1 = Plan(run_id="synth", root=plan.root, tasks=plan.tasks)
    for f in (tmp_path / "run" / "influence").rglob("*"):
        if f.is_file():
            f.unlink()
    one = aggregate_influence(_cfg(str(tmp_path), "cluster.num_workers=1"), plan1, DOMAINS, extra=extra)
    np.testing.assert_array_equal(one.gi, two.gi)
    np.testing.assert_array_equal(one.bootstrap["score_low"], two.bootstrap["score_low"])
    # the same cached per-shard statistics also give the plain per-example mean
    plain = aggregate_influence(_cfg(str(tmp_path), "influence.domain_weighting=examples"), plan1, DOMAINS)
    np.testing.assert_allclose(plain.gi, _reference(data, 0.1, by_tokens=False), rtol=1e-9, atol=1e-12)
    assert not np.allclose(plain.gi, one.gi)


def test_score_shards_hold_every_example_once_and_rerun_resumes(ray_cluster, tmp_path):
    plan, data = _synth(str(tmp_path / "run"), shards=3, rows=100)
    cfg = _cfg(str(tmp_path))
    first = aggregate_influence(cfg, plan, DOMAINS)
    key = os.path.basename(os.path.dirname(first.scores_uri))
    ids: list[str] = []
    for task in plan.corpus_tasks():
        table = pq.read_table(score_shard_uri(plan.root, key, task.shard_id))
        ids += table.column("id").to_pylist()
        assert table.schema.field("scores").type.list_size == len(TARGETS)
    assert sorted(ids) == sorted(data["ids"])  # all rows (scores for every domain), none twice
    assert first.reuse["scores_from_features"] == 3
    stats = glob.glob(str(tmp_path / "run" / "influence" / "*" / "stats" / "*.npz"))
    before = {f: os.stat(f).st_mtime_ns for f in stats}
    again = aggregate_influence(cfg, plan, DOMAINS)
    assert {f: os.stat(f).st_mtime_ns for f in stats} == before  # finished shards are skipped on rerun
    assert again.reuse["scores_from_stats"] == 3
    np.testing.assert_array_equal(again.gi, first.gi)


def test_new_bootstrap_reads_cached_scores_not_features(ray_cluster, tmp_path):
    """Another bootstrap (or seed) on the same features: the per-example scores come from the score
    shards, so the corpus feature files are not even opened, and the result is bit-identical to a cold
    run. (Identity preconditioning: pass 1 reads only the targets; its cache needs completion records,
    tested through `influmix run` in tests/workflows/end_to_end/test_datastore.py.)"""
    plan, _ = _synth(str(tmp_path / "run"), shards=3, rows=100)
    ident = "influence.preconditioner=identity"
    aggregate_influence(_cfg(str(tmp_path), ident, "influence.bootstrap=20"), plan, DOMAINS)
    features = [f for f in (tmp_path / "run").rglob("c*.parquet") if "influence" not in f.parts]
    assert len(features) == 3
    saved = {f: f.read_bytes() for f in features}
    for f in features:  # corpus features unreadable from here on
        f.write_bytes(b"not parquet")
    warm = aggregate_influence(_cfg(str(tmp_path), ident, "influence.bootstrap=30"), plan, DOMAINS)
    assert warm.reuse["scores_from_score_shards"] == 3 and warm.reuse["scores_from_features"] == 0
    for f, data in saved.items():
        f.write_bytes(data)
    for f in (tmp_path / "run" / "influence").rglob("*"):
        if f.is_file():
            f.unlink()
    cold = aggregate_influence(_cfg(str(tmp_path), ident, "influence.bootstrap=30"), plan, DOMAINS)
    assert cold.reuse["scores_from_features"] == 3
    np.testing.assert_array_equal(warm.gi, cold.gi)
    np.testing.assert_array_equal(warm.bootstrap["score_low"], cold.bootstrap["score_low"])
    np.testing.assert_array_equal(warm.gi_se, cold.gi_se)


def test_unreadable_score_shard_is_scored_from_features_again(ray_cluster, tmp_path, caplog):
    plan, _ = _synth(str(tmp_path / "run"), shards=2, rows=50)
    first = aggregate_influence(_cfg(str(tmp_path), "influence.bootstrap=20"), plan, DOMAINS)
    key = os.path.basename(os.path.dirname(first.scores_uri))
    bad = score_shard_uri(plan.root, key, plan.corpus_tasks()[0].shard_id)
    with open(bad, "r+b") as fh:
        fh.truncate(40)
    again = aggregate_influence(_cfg(str(tmp_path), "influence.bootstrap=25"), plan, DOMAINS)
    assert again.reuse["scores_from_features"] == 1 and again.reuse["scores_from_score_shards"] == 1
    np.testing.assert_array_equal(again.gi, first.gi)
    assert pq.read_table(bad).num_rows == 50  # rewritten


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_target_directions_are_token_weighted(tmp_path, reduction):
    """Identity preconditioner: GI = domain mean · t_v with t_v weighted by each example's tokens."""
    root = str(tmp_path / "run")
    e = np.eye(4, dtype=np.float32)
    _write(root, "c0", ["a", "b"], ["code", "web"], [3, 3], np.stack([e[0], e[1]]))
    tasks = [ShardTask(shard_id="c0", uri="x", format="parquet", role="corpus")]
    for name in TARGETS:  # one short (1 token) and one long (3 tokens) example per target
        _write(root, f"t-{name}", [f"{name}-s", f"{name}-l"], [name, name], [1, 3], np.stack([e[0], e[1]]))
        tasks.append(ShardTask(shard_id=f"t-{name}", uri="x", format="parquet", role="target", target_name=name))
    plan = Plan(run_id="tok", root=root, tasks=tuple(tasks))
    cfg = _cfg(str(tmp_path), "influence.preconditioner=identity", "influence.bootstrap=0",
               f"featurize.loss_reduction={reduction}")
    out = aggregate_influence(cfg, plan, ["code", "web"])
    expected = [0.25, 0.75] if reduction == "mean" else [0.25, 0.25]  # Σ n_i φ_i / Σ n_i or Σ φ_i / Σ n_i
    np.testing.assert_allclose(out.gi[:, 0], expected)
    assert out.tokens == {"code": 3, "web": 3} and out.bootstrap == {}


def test_corrupt_feature_shard_names_the_file(tmp_path):
    plan, _ = _synth(str(tmp_path / "run"), shards=2, rows=20)
    bad = datastore.legacy_feature_uri(plan.root, "c1")
    with open(bad, "wb") as fh:
        fh.write(b"not parquet")
    with pytest.raises(CorpusError, match="c1.parquet"):
        aggregate_influence(_cfg(str(tmp_path)), plan, DOMAINS)


def _complete(plan: Plan, attempt: int = 1) -> None:
    """Completion records for the synthetic shards (what the featurizer writes last)."""
    for task in plan.tasks:
        datastore.write_completion(plan.root, datastore.CompletionRecord(
            shard_id=task.shard_id, source_uri=task.uri, role=task.role, target_name=task.target_name,
            output_uri=datastore.legacy_feature_uri(plan.root, task.shard_id), n_examples=1, n_tokens=1,
            domain_counts={}, domain_tokens={}, feature_dim=16, projector_fingerprint="fp", worker="w",
            attempt=attempt, started_at="t0", finished_at="t1", duration_s=0.0))


def test_resumed_aggregation_reads_no_feature_shard_again(ray_cluster, tmp_path):
    """Both passes keep per-shard statistics: with every feature file gone, a rerun gives the same GI;
    a shard whose completion record changed (it was featurized again) is recomputed."""
    plan, _ = _synth(str(tmp_path / "run"), shards=3, rows=100)
    _complete(plan)
    cfg = _cfg(str(tmp_path))
    first = aggregate_influence(cfg, plan, DOMAINS)
    for task in plan.tasks:
        os.remove(datastore.legacy_feature_uri(plan.root, task.shard_id))
    again = aggregate_influence(cfg, plan, DOMAINS)
    np.testing.assert_array_equal(again.gi, first.gi)
    _complete(plan, attempt=2)
    with pytest.raises(CorpusError, match="not found"):
        aggregate_influence(cfg, plan, DOMAINS)
