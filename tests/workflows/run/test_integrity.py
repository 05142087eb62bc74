"""Duplicate-id policy: an id featurized twice across shards is an error naming the id and both shards."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from operators.features import datastore
from operators.errors import CorpusError
from tests.workflows.helpers import fast_config
from workflows.run.integrity import check_unique_ids
from workflows.run.plan import build_plan

pytestmark = pytest.mark.timeout(60)


def _write(plan, task, ids: list[str]) -> None:
    table = datastore.features_table(ids, ["code"] * len(ids), np.ones(len(ids), np.int64),
                                     np.zeros(len(ids), np.float32), np.zeros((len(ids), 4), np.float32), "fp")
    datastore.write_feature_shard(datastore.legacy_feature_uri(plan.root, task.shard_id), table)


def test_duplicate_id_across_shards_is_an_error(tmp_path) -> None:
    cfg = fast_config(str(tmp_path / "out"), str(tmp_path / "cache"))
    plan = replace(build_plan(cfg), store="")  # features written by hand under the run root
    for i, task in enumerate(plan.tasks):
        _write(plan, task, [f"{task.shard_id}-{j}" for j in range(3)])
    assert check_unique_ids(cfg, plan) == 3 * len(plan.tasks)
    a, b = plan.corpus_tasks()[0], plan.corpus_tasks()[4]
    _write(plan, b, ["dup-id", "x-1"])
    _write(plan, a, ["dup-id", "x-2"])
    with pytest.raises(CorpusError, match=rf"duplicate example id 'dup-id' in the corpus: shards {a.uri} and {b.uri}"):
        check_unique_ids(cfg, plan)


def test_same_id_in_corpus_and_target_is_allowed(tmp_path) -> None:
    """Ids are unique per group (the corpus, each target set): one id in the corpus and in every target
    set is no duplicate, while the same id twice within the corpus still is."""
    cfg = fast_config(str(tmp_path / "out"), str(tmp_path / "cache"))
    plan = replace(build_plan(cfg), store="")  # features written by hand under the run root
    shared = {plan.corpus_tasks()[0].shard_id} | {plan.target_tasks(t.name)[0].shard_id for t in cfg.targets}
    assert len(shared) == 1 + len(cfg.targets) >= 3
    for task in plan.tasks:
        _write(plan, task, [f"{task.shard_id}-0"] + (["shared"] if task.shard_id in shared else []))
    assert check_unique_ids(cfg, plan) == len(plan.tasks) + len(shared)  # every id counted, none refused
    _write(plan, plan.corpus_tasks()[1], ["shared"])
    with pytest.raises(CorpusError, match="duplicate example id 'shared' in the corpus"):
        check_unique_ids(cfg, plan)
