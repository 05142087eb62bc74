"""The DSIR baseline on the embedded corpus: its answer is kept in the feature datastore and reused by
analysis runs on the same data, and only by those."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cluster.runtime import layout_or_local
from operators.mixture.budget import Budget
from tests.workflows.helpers import fast_config
from workflows.baselines import BASELINES
from workflows.jobs.examples import ExampleSource
from workflows.run.plan import build_plan
from workflows.solvers import MixtureProblem, SolveContext

DOMAINS = ["changelog", "code", "config", "docs", "legal"]


def _problem(targets: list[str], weights: list[float]) -> MixtureProblem:
    k = len(DOMAINS)
    b = Budget(1e6, np.full(k, 1e9), max_epochs=None)
    prior = np.full(k, 1 / k)
    return MixtureProblem(domains=DOMAINS, targets=targets, target_weights=np.asarray(weights), gi=np.zeros((k, len(targets))),
                          normalize="loss", lower=np.full(k, 0.02), upper=np.full(k, 0.6), prior=prior,
                          prior_kind="uniform", reference=prior, reference_kind="uniform", budget=b,
                          previous_weights=None, info={})


def test_answer_is_kept_in_the_datastore_and_reused_for_the_same_data(tmp_path):
    cfg = fast_config(str(tmp_path / "out"), str(tmp_path / "cache"))
    plan = build_plan(cfg)
    assert plan.store
    ctx = SolveContext(plan=plan, model=None, examples=ExampleSource.of(cfg), layout=layout_or_local(cfg.cluster))
    targets = [t.name for t in cfg.targets]
    weights = [t.weight for t in cfg.targets]
    dsir = BASELINES.build("dsir")
    problem = _problem(targets, list(np.asarray(weights) / sum(weights)))
    first = dsir.solve(problem, ctx)
    assert first.report["from_datastore"] is False
    uri = dsir.cache_uri(plan, problem)
    assert uri.startswith(plan.store) and (tmp_path / "out").as_posix() in uri
    again = dsir.solve(problem, ctx)
    assert again.report["from_datastore"] is True
    np.testing.assert_array_equal(again.weights, first.weights)
    # other target weights are another question: computed anew, and the answer moves
    other = _problem(targets, [0.8, 0.1, 0.1])
    moved = dsir.solve(other, ctx)
    assert moved.report["from_datastore"] is False and dsir.cache_uri(plan, other) != uri
    assert not np.allclose(moved.weights, first.weights)
    # a plan without a datastore never caches
    bare = replace(ctx, plan=replace(plan, store=""))
    assert dsir.cache_uri(bare.plan, problem) is None
    np.testing.assert_allclose(dsir.solve(problem, bare).weights, first.weights, rtol=0, atol=1e-12)
