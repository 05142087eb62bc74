"""Influence averaged over 2 real tiny checkpoints on a real local Ray cluster."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from operators.io import storage
from operators.model.checkpoints import optimizer_from_state, save_step_checkpoint
from operators.errors import InfluMixError
from operators.model.loading import checkpoint_adam_state, load_causal_lm
from operators.training.probing import ProbeSpec, train_on_mixture
from operators.model.tokenize import prepare_tokenizer, tokenize_texts
from tests.workflows.helpers import fast_config
from workflows.stages.aggregate import aggregate_influence, domain_order
from workflows.assets import default_corpus_dir, ensure_default_checkpoint
from workflows.stages.aggregate import average_influence
from workflows.stages.checkpoint_average import CHECKPOINTS_FILE, featurize_all, plan_checkpoints
from workflows.stages.featurize import run_featurize
from workflows.mixture_refresh import resolve_model_uri
from workflows.run.plan import build_plan

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _two_checkpoints(root: str, cache: str) -> None:
    """checkpoint-60 = the embedded default; checkpoint-66 = 6 more AdamW steps on code."""
    loaded = load_causal_lm(ensure_default_checkpoint(cache))
    adam = checkpoint_adam_state(loaded)
    save_step_checkpoint(root, 60, loaded.model, loaded.tokenizer, optimizer_from_state(loaded.model, adam))
    path = sorted(p for p in os.listdir(default_corpus_dir()) if p.startswith("code"))[0]
    texts = pq.read_table(os.path.join(default_corpus_dir(), path)).column("text").to_pylist()[:32]
    batch = tokenize_texts(prepare_tokenizer(loaded.tokenizer), texts, 128)
    opt = train_on_mixture(loaded.model, {"code": (batch.input_ids, batch.attention_mask)}, {"code": 1.0}, 6, 8,
                           ProbeSpec(lr=3e-3), seed=0, optimizer_state=adam)
    save_step_checkpoint(root, 66, loaded.model, loaded.tokenizer, opt)


def test_average_equals_mean_of_per_checkpoint_gi(ray_cluster, model_cache, tmp_path) -> None:
    root = str(tmp_path / "ckpts")
    _two_checkpoints(root, model_cache)
    cfg = fast_config(str(tmp_path / "out"), model_cache, f"model.checkpoint_root={root}",
                      "model.average_checkpoints=2", "influence.bootstrap=20")
    plan = build_plan(cfg)
    model_uri = resolve_model_uri(cfg)
    assert model_uri.endswith("checkpoint-66")
    cset = plan_checkpoints(cfg, plan, model_uri)
    assert cset.averaged and cset.steps == (60, 66)
    assert [p.root for p in cset.plans] == [storage.join(plan.root, "ckpt-60"), storage.join(plan.root, "ckpt-66")]
    featurizer = featurize_all(cset, lambda p, uri: run_featurize(cfg, p, uri))
    assert [c["step"] for c in featurizer["checkpoints"]] == [60, 66]
    order, _ = domain_order(cfg, cset.newest)
    infl = average_influence(cfg, cset, order, featurizer["featurizer"].get("kfac_layout"))

    singles = [aggregate_influence(cfg, p, order) for p in cset.plans]
    assert not np.allclose(singles[0].gi, singles[1].gi)  # the checkpoints really differ
    np.testing.assert_allclose(infl.gi, (singles[0].gi + singles[1].gi) / 2, rtol=1e-9, atol=1e-12)
    assert infl.counts == singles[0].counts == singles[1].counts  # the same sampled examples
    assert infl.bootstrap and infl.bootstrap["score_low"].shape == (len(order),)
    assert infl.preconditioner["averaged_over"] == 2
    assert len({sub.store for sub in cset.plans}) == 2  # each checkpoint's features in its own datastore folder
    for sub in cset.plans:  # ... and its own run sub-root
        assert os.path.isdir(os.path.join(sub.store, "shards")) and os.path.isfile(os.path.join(sub.root, "plan.json"))

    # pinned: a resume resolves the same two; a newer checkpoint under the same run id is refused
    pinned = storage.read_json(storage.join(plan.root, CHECKPOINTS_FILE))
    assert [c["step"] for c in pinned["checkpoints"]] == [60, 66]
    assert plan_checkpoints(cfg, plan, model_uri) == cset
    loaded = load_causal_lm(model_uri)
    save_step_checkpoint(root, 70, loaded.model, loaded.tokenizer, None)
    with pytest.raises(InfluMixError, match="moved on"):
        plan_checkpoints(cfg, plan, resolve_model_uri(cfg))
    # N = 1: the single-checkpoint path at the run root, unchanged
    single = plan_checkpoints(cfg.model_copy(update={"model": cfg.model.model_copy(
        update={"average_checkpoints": 1})}), plan, model_uri)
    assert not single.averaged and single.plans == (plan,)
