"""TiKMiX-M stage with real probes on the embedded model: box, covered region, fall-back to TiKMiX-D."""

from __future__ import annotations

import numpy as np
import pytest

from operators.mixture.search import in_box
from tests.workflows.helpers import fast_config
from workflows.jobs.examples import ExampleSource, read_task_rows
from workflows.mixture_refresh import resolve_model_uri
from workflows.stages.problem import build_problem
from workflows.run.plan import build_plan
from workflows.solvers import SOLVERS
from workflows.stages.solve import solve_context

pytestmark = pytest.mark.slow

TINY = {"candidates": 6, "seeds": 2, "steps": 2, "batch_size": 4, "reference_examples": 16, "max_pool": 16,
        "confirm_seeds": 2, "samples": 256, "iterations": 3, "bootstrap": 8, "explore": 2}


@pytest.fixture(scope="module")
def setup(ray_cluster, model_cache, tmp_path_factory):
    from cluster.runtime import worker_layout

    cfg = fast_config(str(tmp_path_factory.mktemp("tikmix_m")), model_cache)
    plan = build_plan(cfg)
    domains = sorted({d for t in plan.corpus_tasks()
                      for d in read_task_rows(ExampleSource.of(cfg), t).column("domain").to_pylist()})
    problem = build_problem(cfg, domains, {d: 20_000 for d in domains}, previous=None)
    gi = np.linspace(1.0, -1.0, len(domains))[:, None] * np.ones((1, len(cfg.targets)))
    problem = problem.with_gi(gi)
    ctx = solve_context(cfg, plan, resolve_model_uri(cfg), worker_layout(cfg.cluster))
    w_d = SOLVERS.build("tikmix_d").solve(problem).weights
    return problem, ctx, w_d


def test_searched_mixture_stays_in_covered_box_and_falls_back_when_not_better(setup) -> None:
    problem, ctx, w_d = setup
    solver = SOLVERS.build("tikmix_m", {**TINY, "min_cv_r2": -1e9, "margin": 1e9})
    result = solver.solve(problem, ctx)
    rep = result.report
    W = np.array(rep["candidates"])
    np.testing.assert_allclose(W[0], w_d)  # the centre is TiKMiX-D's answer
    box_lo, box_hi = np.array(rep["box"]["lower"]), np.array(rep["box"]["upper"])
    assert in_box(W[:7], box_lo, box_hi).all()  # w_D and the Latin Hypercube inside the box around it
    positive = int((problem.scores > 0).sum())
    assert len(W) == 7 + 2 + positive  # exploration: 2 Dirichlet + one heavy mixture per positive domain
    assert not in_box(W[7:], box_lo, box_hi).all()  # ... which reach beyond that box
    assert np.all(box_lo >= 0.5 * w_d - 1e-12) and np.all(box_hi <= 2 * w_d + 1e-12)
    w_m = np.array([rep["tikmix_m"][d] for d in problem.domains])
    lo, hi = np.array(rep["covered_box"]["lower"]), np.array(rep["covered_box"]["upper"])
    assert in_box(w_m, lo, hi)[0] and w_m.sum() == pytest.approx(1.0)
    # labels: seeds × candidates measured on the validation split, with their noise
    assert np.array(rep["label_deltas"]).shape == (len(W), 2) and rep["split"] == "validation_select"
    assert rep["label_noise"]["seed_std"] > 0 and rep["regressor"]["n_bootstrap"] > 0
    # an impossible margin: w_M cannot beat w_D, so TiKMiX-D's answer is returned
    assert rep["fell_back"] and "did not beat" in rep["reason"]
    np.testing.assert_allclose(result.weights, w_d)
    assert len(rep["confirmation"]["delta"]["tikmix_m"]) == TINY["confirm_seeds"]


def test_unskilled_regression_falls_back_without_search(setup) -> None:
    problem, ctx, w_d = setup
    result = SOLVERS.build("tikmix_m", {**TINY, "min_cv_r2": 1.0}).solve(problem, ctx)
    assert result.report["fell_back"] and "held-out skill" in result.report["reason"]
    assert "confirmation" not in result.report and "search" not in result.report
    np.testing.assert_allclose(result.weights, w_d)
