"""Mixture testbed: the refresh's chosen mixture, trained for real, beats uniform on the target loss."""

from __future__ import annotations

import math

import numpy as np
import pytest

from operators.errors import ConfigError
from tests.workflows.helpers import fast_config
from workflows.mixture_refresh import resolve_model_uri, run_mixture_refresh
from workflows.run.plan import build_plan
from benchmarks.testbed.harness import evaluate_mixtures, grid_mixtures, run_testbed

pytestmark = pytest.mark.slow

STEPS, BATCH, SEEDS, PER_DOMAIN = 30, 8, [0, 1], 64


@pytest.fixture(scope="module")
def testbed(ray_cluster, model_cache, tmp_path_factory):
    cfg = fast_config(str(tmp_path_factory.mktemp("testbed")), model_cache)
    result = run_mixture_refresh(cfg)
    report = run_testbed(cfg, result.weights, grid_size=len(result.weights) + 1, steps=STEPS,
                         batch_size=BATCH, seeds=SEEDS, per_domain=PER_DOMAIN)
    return cfg, result, report


def test_grid_mixtures_within_bounds() -> None:
    domains = ["a", "b", "c", "d"]
    lo, hi = np.full(4, 0.05), np.full(4, 0.5)
    grid = grid_mixtures(domains, 9, seed=3, lower=lo, upper=hi)
    assert list(grid)[:5] == ["uniform", "heavy:a", "heavy:b", "heavy:c", "heavy:d"]
    assert len(grid) == 9 and sum(name.startswith("dirichlet:") for name in grid) == 4
    for w in grid.values():
        v = np.array([w[d] for d in domains])
        assert v.sum() == pytest.approx(1.0) and np.all(v >= lo - 1e-9) and np.all(v <= hi + 1e-9)
    assert grid["uniform"] == pytest.approx(dict.fromkeys(domains, 0.25))
    heavy = grid["heavy:c"]
    assert heavy["c"] == pytest.approx(0.5) and max(heavy, key=heavy.get) == "c"
    assert grid == grid_mixtures(domains, 9, seed=3, lower=lo, upper=hi)
    assert grid["dirichlet:0"] != grid_mixtures(domains, 9, seed=4, lower=lo, upper=hi)["dirichlet:0"]
    with pytest.raises(ConfigError, match="n=4"):
        grid_mixtures(domains, 4, seed=0)
    with pytest.raises(ConfigError, match="infeasible"):
        grid_mixtures(domains, 5, seed=0, upper=np.full(4, 0.2))


def test_evaluate_rejects_bad_input(tmp_path, model_cache) -> None:
    cfg = fast_config(str(tmp_path), model_cache)
    plan = build_plan(cfg)
    with pytest.raises(ConfigError, match="grid names"):
        evaluate_mixtures(cfg, plan, "unused", {"u": {"code": 1.0}}, 1, 1, [0], 1, grid=["nope"])
    with pytest.raises(ConfigError, match="'bad'"):
        evaluate_mixtures(cfg, plan, "unused", {"bad": {"code": -1.0}}, 1, 1, [0], 1)


def test_chosen_mixture_beats_uniform(testbed) -> None:
    cfg, result, report = testbed
    rows = report["mixtures"]
    assert {"chosen", "tokens", "uniform"} <= set(rows)
    assert rows["chosen"]["weights"] == pytest.approx(result.weights)
    for row in rows.values():
        assert len(row["delta"]) == len(SEEDS) and all(math.isfinite(d) for d in row["delta"])
    # training on the target-serving mixture lowers the target loss more than uniform does
    chosen, uniform = rows["chosen"]["mean"], rows["uniform"]["mean"]
    print(f"ΔL chosen {chosen:.4f} ± {rows['chosen']['std']:.4f}, uniform {uniform:.4f} ± "
          f"{rows['uniform']['std']:.4f}, regret chosen {rows['chosen']['regret']:+.4f}, "
          f"seed std {report['seed_std']:.4f}")
    assert chosen < uniform
    assert report["comparison"]["improvement"] == pytest.approx(uniform - chosen)


def test_regret_against_grid(testbed) -> None:
    _, result, report = testbed
    rows = report["mixtures"]
    grid = report["grid"]
    assert len(grid) == len(result.weights) + 1 and "uniform" in grid and "chosen" not in grid
    assert report["best"] in grid and rows[report["best"]]["regret"] == 0.0
    for name, row in rows.items():
        assert math.isfinite(row["regret"])
        if name in grid:
            assert row["regret"] >= 0.0
        assert row["regret"] == pytest.approx(row["mean"] - report["best_mean"])
    assert math.isfinite(report["seed_std"]) and report["seed_std"] >= 0.0


def test_results_deterministic_for_fixed_seed(testbed) -> None:
    cfg, result, report = testbed
    rows = report["mixtures"]
    again = evaluate_mixtures(cfg, build_plan(cfg), resolve_model_uri(cfg),
                              {"uniform": rows["uniform"]["weights"], "chosen": result.weights},
                              STEPS, BATCH, [SEEDS[1]], PER_DOMAIN)
    assert again["base_loss"] == report["base_loss"]
    assert again["mixtures"]["chosen"]["delta"] == [rows["chosen"]["delta"][1]]
    assert again["mixtures"]["uniform"]["delta"] == [rows["uniform"]["delta"][1]]
