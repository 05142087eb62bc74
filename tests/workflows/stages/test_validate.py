"""Validation before publishing on the embedded default: real probes, validation split only."""

from __future__ import annotations

import numpy as np
import pytest

from cluster.runtime import layout_or_local
from workflows.mixture_refresh import resolve_model_uri
from workflows.stages.problem import build_problem
from workflows.run.plan import build_plan
from workflows.stages.validate import dedupe, run_validation

from tests.workflows.helpers import fast_config

DOMAINS = ["changelog", "code", "config", "docs", "legal"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, model_cache):
    cfg = fast_config(str(tmp_path_factory.mktemp("validate")), model_cache, "mixture.validation.steps=10",
                      "mixture.validation.seeds=2", "mixture.validation.line_points=[0.5]",
                      "mixture.validation.reference_examples=48", "mixture.validation.explore.generators=[]",
                      "mixture.validation.explore.surrogate=0")
    plan = build_plan(cfg)
    problem = build_problem(cfg, DOMAINS, {d: 100_000 for d in DOMAINS}, None)
    return cfg, plan, resolve_model_uri(cfg), problem


@pytest.mark.slow
def test_a_harmful_solution_is_not_published(setup):
    cfg, plan, model_uri, problem = setup
    bad = np.array([0.02, 0.02, 0.6, 0.02, 0.34])  # config + legal: unlike the docs/code-heavy target
    good = np.array([0.02, 0.3, 0.02, 0.6, 0.06])
    out = run_validation(cfg, plan, model_uri, problem, {"bad": bad, "good": good}, {}, "bad",
                         layout_or_local(cfg.cluster))
    rows = out["candidates"]
    assert set(rows) == {"reference", "bad", "good", "line:0.5"}
    assert rows["bad"]["gain"] < 0 < rows["good"]["gain"]
    assert out["published"] == "good" and out["improvement_found"]
    assert out["split"] == "validation" and out["seed_std"] > 0
    np.testing.assert_allclose(out["published_weights"], good)
    assert rows["good"]["ci"][0] <= rows["good"]["gain"] <= rows["good"]["ci"][1]
    # confirmed on fresh seeds before publishing; both horizons reported
    assert out["confirmation"]["published"] == "good" and "confirmed" in rows["good"]
    assert set(out["confirmation"]["seeds"]).isdisjoint(out["seeds"])
    assert out["horizons"]["probe_points"] == [2, 5, 10] and out["horizons"]["stage_steps"] >= 10
    assert rows["good"]["stage_ci"][0] <= rows["good"]["stage_gain"] <= rows["good"]["stage_ci"][1]


@pytest.mark.slow
def test_budget_scaled_pools_shrink_scarce_domains(setup):
    cfg, plan, model_uri, _ = setup
    tokens = {d: 1_000_000 for d in DOMAINS} | {"legal": 2_000}
    cfg2 = cfg.model_copy(update={"mixture": cfg.mixture.model_copy(update={
        "budget": cfg.mixture.budget.model_copy(update={"tokens_next_stage": 1_000_000})})})
    problem = build_problem(cfg2, DOMAINS, tokens, None)
    uniform = problem.reference
    out = run_validation(cfg2, plan, model_uri, problem, {"same": uniform}, {}, "same",
                         layout_or_local(cfg2.cluster))
    assert out["pool_sizes"]["legal"] < out["pool_sizes"]["docs"]
    assert out["aliases"] == {"same": "reference", "line:0.5": "reference"}
    assert out["published"] == "reference" and not out["improvement_found"]


def test_dedupe_keeps_first_of_identical_candidates():
    kept, alias = dedupe({"a": (np.array([0.5, 0.5]), "x"), "b": (np.array([0.5, 0.5]), "y"),
                          "c": (np.array([0.4, 0.6]), "z")})
    assert list(kept) == ["a", "c"] and alias == {"b": "a"}


def test_select_and_confirm_examples_are_disjoint_and_rotate_with_the_checkpoint(setup, tmp_path):
    import shutil

    from workflows.stages.featurize import model_source
    from workflows.stages.validate import rotation_seed, validation_reference

    cfg, plan, model_uri, _ = setup
    spec = cfg.mixture.validation
    tokenizer = model_source(cfg, model_uri).tokenizer()

    def rows(ref, idx):
        ids, mask = ref
        return {tuple(ids[i][mask[i].bool()].tolist()) for i in idx}

    seed = rotation_seed(cfg, model_uri, spec)
    assert seed == rotation_seed(cfg, model_uri, spec)  # a re-analysis of the checkpoint draws the same
    ref, labels, sel, conf = validation_reference(cfg, plan, tokenizer, spec, seed)
    assert len(sel) and len(conf) and not set(sel) & set(conf) and labels.size == ref[0].shape[0]
    assert not rows(ref, sel) & rows(ref, conf)  # no example both chooses and confirms
    # another checkpoint (same weights, another location) draws other examples and seeds
    other = str(tmp_path / "copy")
    shutil.copytree(model_uri, other)
    seed2 = rotation_seed(cfg, other, spec)
    assert seed2 != seed
    ref2, _, sel2, conf2 = validation_reference(cfg, plan, tokenizer, spec, seed2)
    assert rows(ref2, sel2) != rows(ref, sel) or rows(ref2, conf2) != rows(ref, conf)
    fixed = spec.model_copy(update={"rotate": "none"})
    assert rotation_seed(cfg, model_uri, fixed) == rotation_seed(cfg, other, fixed) == spec.seed
