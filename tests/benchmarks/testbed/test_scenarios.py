"""Harder-testbed scenarios: configs, acceptance arithmetic, and one scenario end to end (structure only)."""

from __future__ import annotations

import math

import pytest

from operators.errors import ConfigError
from benchmarks.testbed.scenarios import (
    GOALS,
    PUBLISHED,
    SCENARIOS,
    acceptance,
    budget_steps,
    candidate_mixtures,
    run_scenario,
    scenario_config,
)

pytestmark = pytest.mark.slow


def _report(means: dict[str, float], stds: dict[str, float], grid: list[str], n: int = 3) -> dict:
    best = min(grid, key=lambda g: means[g])
    rows = {k: {"mean": m, "std": stds[k], "delta": [m] * n, "regret": m - means[best]} for k, m in means.items()}
    pooled = math.sqrt(sum(s ** 2 for s in stds.values()) / len(stds))
    return {"mixtures": rows, "grid": grid, "best": best, "best_mean": means[best], "seed_std": pooled}


def test_scenario_configs_resolve(tmp_path) -> None:
    assert set(SCENARIOS) == {"oop_small", "oop", "mixed", "saturated", "two_targets"}
    for name in SCENARIOS:
        cfg = scenario_config(name, str(tmp_path / name))
        assert len(cfg.corpus.paths) == 2 and cfg.corpus.paths[1].endswith("scenarios/corpus")
        assert len(cfg.targets) == (2 if name == "two_targets" else 1)
        assert all("scenarios/targets" in t.paths[0] for t in cfg.targets)
        budget = cfg.mixture.budget.tokens_next_stage
        assert budget and budget_steps(cfg, 8) * 8 * cfg.featurize.max_length == budget
        assert cfg.sampling.rate == pytest.approx(0.2)  # fast refresh settings
    with pytest.raises(ConfigError, match="unknown testbed scenario"):
        scenario_config("nope", str(tmp_path))


def test_acceptance_arithmetic() -> None:
    grid = ["uniform", "heavy:a", "heavy:b"]
    stds = dict.fromkeys(["published", *grid], 0.01)
    good = acceptance(_report({"published": -0.10, "uniform": -0.07, "heavy:a": -0.09, "heavy:b": -0.05},
                              stds, grid), PUBLISHED)
    assert good["gain"] == pytest.approx(0.03) and good["gain_std"] == pytest.approx(3.0)
    assert good["regret"] == pytest.approx(-0.01) and good["best"] == "heavy:a"
    assert not good["worse_beyond_noise"] and good["passed"] and good["goals"] == GOALS
    assert good["noise"] == pytest.approx(2 * 0.01 * math.sqrt(2 / 3))
    bad = acceptance(_report({"published": -0.04, "uniform": -0.07, "heavy:a": -0.09, "heavy:b": -0.05},
                             stds, grid), PUBLISHED)
    assert bad["gain_std"] == pytest.approx(-3.0) and bad["worse_beyond_noise"] and not bad["passed"]
    assert bad["regret"] == pytest.approx(0.05)
    # a gain within the noise but above 1 std, with regret beyond the goal, fails on regret only
    close = acceptance(_report({"published": -0.085, "uniform": -0.07, "heavy:a": -0.12, "heavy:b": -0.05},
                               stds, grid), PUBLISHED)
    assert close["gain_std"] >= 1 and not close["worse_beyond_noise"] and close["regret"] > GOALS["regret"]
    assert not close["passed"]
    # no evaluated mixture beats uniform by 1.5 std: a published mixture within noise of uniform passes
    flat = acceptance(_report({"published": -0.071, "uniform": -0.07, "heavy:a": -0.075, "heavy:b": -0.06},
                              stds, grid), PUBLISHED)
    assert not flat["gain_required"] and flat["gain_std"] < 1 and flat["passed"]
    # the regret counts every evaluated mixture (a baseline beating the grid too), coverage and cost
    rep = _report({"published": -0.10, "uniform": -0.07, "heavy:a": -0.09, "heavy:b": -0.05,
                   "baseline:dsir": -0.13}, dict.fromkeys(["published", "baseline:dsir", *grid], 0.01), grid)
    rep["settings"] = {"steps": 160}
    a = acceptance(rep, PUBLISHED, stage_ci=[0.0, 0.05], refresh_steps=480.0)
    assert a["regret"] == pytest.approx(0.03) and a["best_any"] == "baseline:dsir" and not a["passed"]
    assert a["covered"] == [True] * 3 and a["grid_steps"] == 3 * 160 * 3
    assert a["cost_ratio"] == pytest.approx(480 / 1440) and a["cost_ratio_one_seed"] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="'missing'"):
        acceptance(_report({"uniform": 0.0, "heavy:a": 0.0, "heavy:b": 0.0}, dict.fromkeys(grid, 0.01), grid),
                   "missing")


def test_candidate_mixtures_from_report() -> None:
    report = {"solvers": {"tikmix_d": {"weights": {"a": 0.7, "b": 0.3}}},
              "baselines": {"uniform": {"weights": {"a": 0.5, "b": 0.5}},
                            "tokens": {"weights": {"a": 0.9, "b": 0.1}}, "dsir": {"weights": {"a": 0.2, "b": 0.8}}}}
    assert candidate_mixtures(report) == {"solver:tikmix_d": {"a": 0.7, "b": 0.3},
                                          "baseline:dsir": {"a": 0.2, "b": 0.8}}
    assert candidate_mixtures({}) == {}


def test_packed_pools_hold_every_token(tmp_path) -> None:
    from transformers import PreTrainedTokenizerFast

    from operators.model.tokenize import prepare_tokenizer
    from workflows.assets import default_tokenizer_dir
    from workflows.run.plan import build_plan
    from benchmarks.testbed.harness import packed_pools

    cfg = scenario_config("oop_small", str(tmp_path), overrides=["sampling.rate=1.0"])
    tok = prepare_tokenizer(PreTrainedTokenizerFast.from_pretrained(default_tokenizer_dir()))
    pools = packed_pools(cfg, build_plan(cfg), tok, 100_000, 1, ["de"])
    ids, mask = pools["de"]
    import pyarrow.parquet as pq
    from workflows.assets import DATA_DIR

    texts = pq.read_table(DATA_DIR / "scenarios" / "corpus" / "de-0000.parquet").column("text").to_pylist()
    lengths = [len(e) for e in tok(texts)["input_ids"]]
    length = cfg.featurize.max_length
    assert ids.shape == (sum(-(-n // length) for n in lengths), length)  # no window is < 2 tokens here
    assert int(mask.sum()) == sum(lengths)  # every token of every example, once
    assert int(ids[0, 0]) == tok.bos_token_id


@pytest.mark.slow
def test_scenario_end_to_end_structure(ray_cluster, model_cache, tmp_path) -> None:
    seeds, steps, grid_size = [0, 1], 5, 9
    # the default 60-step tiny model (shared test cache) and a short validation stage keep it fast
    fast = ["model.tiny.warmup_steps=60", "mixture.validation.steps=2"]
    res = run_scenario("oop_small", str(tmp_path / "out"), cache_dir=model_cache, overrides=fast, steps=steps,
                       seeds=seeds, grid_size=grid_size, reference_examples=32)
    report = res["testbed"]
    rows = report["mixtures"]
    grid = report["grid"]
    assert res["scenario"] == "oop_small" and res["config"] == "scenario_oop_small"
    assert report["settings"]["steps"] == steps and report["settings"]["seeds"] == seeds
    assert report["settings"]["reference_split"] == "test"
    assert len(grid) == grid_size and grid[0] == "uniform" and {PUBLISHED, "tokens", "baseline:dsir"} <= set(rows)
    upper = report["bounds"]["upper"]
    for name in grid:  # the grid stays inside the refresh problem's bounds (reuse cap included)
        assert all(rows[name]["weights"][d] <= upper[d] + 1e-9 for d in upper), name
    assert report["settings"]["packed"] and report["pool_sizes"]["de"] > 70  # every window of all 70 examples
    assert rows[PUBLISHED]["weights"] == pytest.approx(res["refresh"]["weights"])
    for name, row in rows.items():
        assert sum(row["weights"].values()) == pytest.approx(1.0), name
        assert len(row["delta"]) == len(seeds) and all(math.isfinite(d) for d in row["delta"])
        assert row["regret"] == pytest.approx(row["mean"] - report["best_mean"])
        if name in grid:
            assert row["regret"] >= 0.0
        reps = row["repetitions"]
        for d, w in row["weights"].items():
            assert reps[d] == pytest.approx(w * steps * 8 / report["pool_sizes"][d])
    assert report["best"] in grid and rows[report["best"]]["regret"] == 0.0
    assert report["seed_std"] > 0
    acc = res["acceptance"]
    assert acc["regret_grid"] == pytest.approx(rows[PUBLISHED]["regret"])
    others = min(r["mean"] for k, r in rows.items() if k != PUBLISHED)
    assert acc["regret"] == pytest.approx(rows[PUBLISHED]["mean"] - others)  # vs grid, baselines and solvers
    assert acc["refresh_steps"] > 0 and len(acc["covered"]) == len(seeds)
    assert acc["gain"] == pytest.approx(rows["uniform"]["mean"] - rows[PUBLISHED]["mean"])
    assert acc["gain_std"] == pytest.approx(acc["gain"] / report["seed_std"])
    assert acc["passed"] == ((acc["gain_std"] >= GOALS["gain_std"] or not acc["gain_required"])
                             and not acc["worse_beyond_noise"]
                             and acc["regret"] <= GOALS["regret"])
    assert set(res["target_losses"]) == {"target_nl"} and math.isfinite(res["target_losses"]["target_nl"]["nl"])
