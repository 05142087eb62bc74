"""Shard plans: deterministic listing of corpus and target shards, stable hashes, spec routing."""

from __future__ import annotations

import pytest

from operators.errors import ConfigError
from tests.workflows.helpers import fast_config
from workflows.run.plan import build_plan, run_root, spec_for_task


def test_plan_lists_corpus_and_target_shards_deterministically(tmp_path):
    cfg = fast_config(str(tmp_path), str(tmp_path / "cache"))
    a, b = build_plan(cfg), build_plan(cfg)
    assert a.plan_hash == b.plan_hash and a.tasks == b.tasks
    assert a.root == run_root(cfg) and a.root.endswith(f"runs/{a.run_id}") and a.run_id.startswith("default-")
    assert a.store.startswith(str(tmp_path)) and all(t.key for t in a.tasks)
    assert len(a.corpus_tasks()) == 15
    assert {t.target_name for t in a.target_tasks()} == {t.name for t in cfg.targets}
    assert all(t.shard_id.startswith(f"target-{t.target_name}-") for t in a.target_tasks())
    assert len({t.shard_id for t in a.tasks}) == len(a.tasks)


def test_target_tasks_read_as_their_own_domain(tmp_path):
    cfg = fast_config(str(tmp_path), str(tmp_path / "cache"))
    plan = build_plan(cfg)
    target = plan.target_tasks("val_code")[0]
    spec = spec_for_task(cfg, target)
    assert spec.domain_column is None and spec.domain_from_path == {".*": "val_code"}
    assert spec_for_task(cfg, plan.corpus_tasks()[0]).domain_column == "domain"
    bogus = target.model_copy(update={"target_name": "nope"})
    with pytest.raises(ConfigError, match="unknown target 'nope'"):
        spec_for_task(cfg, bogus)


def test_changing_inputs_changes_the_plan_hash(tmp_path):
    import shutil

    from workflows.assets import default_corpus_dir

    corpus = tmp_path / "corpus"
    shutil.copytree(default_corpus_dir(), corpus)
    cfg = fast_config(str(tmp_path / "out"), str(tmp_path / "cache"), f"corpus.paths=[{corpus}]")
    before = build_plan(cfg).plan_hash
    (corpus / "code-0002.parquet").unlink()
    assert build_plan(cfg).plan_hash != before
