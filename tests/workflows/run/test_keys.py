"""Datastore keys: what changes the featurizer key, a shard key, the analysis key (and what does not)."""

from __future__ import annotations

import os
import shutil

from tests.workflows.helpers import fast_config
from workflows.assets import default_corpus_dir
from workflows.run.plan import run_keys


def _config(tmp_path, *extra: str):
    return fast_config(str(tmp_path / "out"), str(tmp_path / "cache"), f"corpus.paths=[{tmp_path / 'corpus'}]",
                       *extra)


def test_keys_follow_what_determines_features(tmp_path):
    shutil.copytree(default_corpus_dir(), tmp_path / "corpus")
    base = run_keys(_config(tmp_path))
    by_uri = {t.uri: t.key for t in base.tasks}
    assert len(set(by_uri.values())) == len(base.tasks)  # every shard its own key
    assert base.run_id == f"default-{base.analysis[:12]}"

    # where outputs go and how the cluster runs change no key
    moved = run_keys(fast_config(str(tmp_path / "elsewhere"), str(tmp_path / "cache2"),
                                 f"corpus.paths=[{tmp_path / 'corpus'}]", "cluster.num_workers=1"))
    assert (moved.featurizer, moved.analysis) == (base.featurizer, base.analysis)

    # analysis settings: same features, other run
    analysis = run_keys(_config(tmp_path, "mixture.beta=3.0", "mixture.validation.steps=8", "influence.seed=3"))
    assert analysis.featurizer == base.featurizer and {t.key for t in analysis.tasks} == set(by_uri.values())
    assert analysis.analysis != base.analysis

    # featurizer settings: other features
    assert run_keys(_config(tmp_path, "featurize.max_length=64")).featurizer != base.featurizer
    assert run_keys(_config(tmp_path, "sampling.seed=1")).featurizer != base.featurizer

    # a rewritten shard (other mtime) changes its own key only; the target split changes only target keys
    victim = tmp_path / "corpus" / "code-0001.parquet"
    stat = victim.stat()
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = run_keys(_config(tmp_path))
    changed = [t.uri for t in touched.tasks if by_uri[t.uri] != t.key]
    assert changed == [str(victim)] and touched.analysis != base.analysis
    split = run_keys(_config(tmp_path, "targets_split.seed=11"))
    assert {t.role for t in split.tasks if t.key != {x.uri + x.role: x.key for x in touched.tasks}[t.uri + t.role]} \
        == {"target"}
