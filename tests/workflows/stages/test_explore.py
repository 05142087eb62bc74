"""Exploration generators of the validation stage (workflows/stages/explore.py) and the validation
objective over several targets, on hand-built problems (no probes)."""

from __future__ import annotations

import numpy as np
import pytest

from operators.errors import ConfigError
from operators.mixture.budget import Budget
from workflows.config import ExploreSpec, load_config
from workflows.solvers import SOLVERS, MixtureProblem
from operators.mixture.horizon import extrapolation_weights
from workflows.stages.explore import EXPLORERS, ExploreInput, exploration_candidates, surrogate_round, trajectory_round
from workflows.stages.validate import Objective

DOMAINS = ["code", "docs", "legal", "web", "fr"]
# target 0 likes code, target 1 likes fr; legal has nothing to offer either
GI = np.array([[0.6, -0.1], [0.2, 0.0], [-0.3, -0.2], [0.0, 0.05], [-0.1, 0.5]])


def _problem(gi: np.ndarray = GI, weights=(0.5, 0.5)) -> MixtureProblem:
    k = len(DOMAINS)
    b = Budget(1e6, np.full(k, 1e9), max_epochs=None)
    prior = np.full(k, 1 / k)
    return MixtureProblem(domains=DOMAINS, targets=["t_code", "t_fr"][: gi.shape[1]],
                          target_weights=np.asarray(weights, dtype=float) / sum(weights), gi=gi,
                          normalize="balanced", lower=np.full(k, 0.02), upper=np.full(k, 0.6), prior=prior,
                          prior_kind="uniform", reference=prior, reference_kind="uniform", budget=b,
                          info={"beta": 0.5})


def _input(problem: MixtureProblem, spec: ExploreSpec | None = None, high=None) -> ExploreInput:
    return ExploreInput(problem, spec or ExploreSpec(), "tikmix_d", {}, high, seed=0)


def test_registry_and_unknown_generator_fails_in_config() -> None:
    assert {"dirichlet", "heavy", "per_target"} <= set(EXPLORERS.names())
    with pytest.raises(ConfigError, match="unknown exploration generator"):
        exploration_candidates(_input(_problem(), ExploreSpec(generators=["nope"])), {})
    with pytest.raises(ConfigError, match="concentrations"):
        load_config("default", ["mixture.validation.explore.concentrations=[0]"])


def test_heavy_mixtures_only_for_domains_with_positive_evidence() -> None:
    p = _problem()
    out = EXPLORERS.get("heavy")().generate(_input(p))
    heavy = {n.split(":")[-1] for n in out}
    positive = {d for d, s in zip(DOMAINS, p.scores) if s > 0}
    assert heavy == positive and "legal" not in heavy
    for name, (w, _) in out.items():
        assert w[DOMAINS.index(name.split(":")[-1])] == pytest.approx(0.6)  # 0.65 capped by the bound
    # a CI reaching above 0 counts as evidence too
    high = p.scores.copy()
    high[DOMAINS.index("legal")] = 0.01
    assert "explore:heavy:legal" in EXPLORERS.get("heavy")().generate(_input(p, high=high))


def test_per_target_optima_follow_each_target_alone() -> None:
    p = _problem()
    out = EXPLORERS.get("per_target")().generate(_input(p))
    assert set(out) == {"explore:target:t_code", "explore:target:t_fr"}
    assert np.argmax(out["explore:target:t_code"][0]) == DOMAINS.index("code")
    assert np.argmax(out["explore:target:t_fr"][0]) == DOMAINS.index("fr")
    assert EXPLORERS.get("per_target")().generate(_input(_problem(GI[:, :1], (1.0,)))) == {}


def test_exploration_candidates_are_new_seeded_and_bounded() -> None:
    p = _problem()
    solved = SOLVERS.configured("tikmix_d", {}).solve(p).weights
    existing = {"reference": (p.reference, "uniform"), "tikmix_d": (solved, "solver")}
    a = exploration_candidates(_input(p), existing)
    b = exploration_candidates(_input(p), existing)
    assert list(a) == list(b) and all(np.array_equal(a[n][0], b[n][0]) for n in a)
    assert sum(n.startswith("explore:dirichlet") for n in a) >= 4
    every = [w for w, _ in existing.values()] + [w for w, _ in a.values()]
    for i, w in enumerate(every):
        assert np.all(w >= p.lower - 1e-9) and np.all(w <= p.upper + 1e-9)
        assert w.sum() == pytest.approx(1.0)
        for v in every[:i]:
            assert np.abs(w - v).sum() >= 0.1 - 1e-9  # min_l1 apart from each other and the existing


def test_surrogate_round_proposes_named_candidates() -> None:
    p = _problem()
    W = np.array([w for w, _ in exploration_candidates(_input(p), {}).values()])
    best = np.array([0.5, 0.1, 0.02, 0.08, 0.3])
    gains = -((W - best) ** 2).sum(axis=1)
    out, report = surrogate_round(_input(p), W, gains)
    assert out and all(n.startswith("explore:surrogate") for n in out)
    assert report["regressor"]["fitted"]


def test_multi_step_candidate_follows_the_domain_that_keeps_paying_not_the_one_that_saturates() -> None:
    """First-order influence favours code for target 0; along the probes code's effect is spent after a
    few steps while fr's keeps growing, so at the stage horizon the multi-step answer moves weight from
    code to fr relative to the first-order answer."""
    p = _problem(GI[:, :1], weights=(1.0,))
    rng = np.random.default_rng(0)
    W = rng.dirichlet(np.ones(len(DOMAINS)), 24)
    points = [4, 8, 16]
    t = np.log(np.array(points, dtype=float))
    drop = np.zeros((3, len(DOMAINS)))
    drop[:, 0] = 0.05  # code: all of its effect within the first steps
    drop[:, 4] = 0.03 * t  # fr: keeps paying
    delta = (-0.1 * t[None, :] - W @ drop.T)[:, None, :, None] + 0.002 * rng.standard_normal((24, 2, 3, 1))
    coef, used = extrapolation_weights(points, 160.0)
    on = ExploreSpec(trajectory=True)
    out, report = trajectory_round(_input(p, on), W, delta, coef, used)
    first = SOLVERS.configured("tikmix_d", {}).solve(p).weights
    w = out["explore:multi_step"][0]
    assert report["fitted"] and report["horizon"] == "probe" and report["horizon_steps"] is None
    stage, at_stage = trajectory_round(_input(p, ExploreSpec(trajectory=True, trajectory_horizon="stage")), W, delta, coef, used)
    assert at_stage["horizon_steps"] == used and stage["explore:multi_step"][0][4] > w[4] - 1e-9
    assert w[4] > first[4] + 0.1 and w[0] < first[0]
    assert report["scores"]["fr"] > report["scores"]["code"]
    assert report["first_order_scores"]["code"] > report["first_order_scores"]["fr"]
    off, why = trajectory_round(_input(p), W, delta, coef, used)  # off by default
    assert off == {} and "false" in why["reason"]


def test_objective_weights_each_targets_own_per_token_change() -> None:
    tokens = np.array([10.0, 10.0, 30.0])  # two examples of target 0, one long one of target 1
    labels = np.array([0, 0, 1])
    before = np.array([20.0, 20.0, 150.0])  # per-token losses 2.0 and 5.0
    after = np.array([[18.0, 18.0, 147.0]])  # ΔL: target 0 −0.2, target 1 −0.1
    one = Objective(tokens, np.zeros(3, dtype=int), np.array([1.0]))
    assert one(before, after)[0] == pytest.approx((-2 - 2 - 3) / 50)  # one target: token-weighted mean
    nats = Objective(tokens, labels, np.array([0.5, 0.5]))
    assert nats(before, after)[0] == pytest.approx(0.5 * -0.2 + 0.5 * -0.1)
    rel = Objective(tokens, labels, np.array([0.5, 0.5]), "relative")
    assert rel(before, after)[0] == pytest.approx((0.5 * -0.2 / 2 + 0.5 * -0.1 / 5) * 3.5)
    delta, base = nats.per_target(before, after)
    np.testing.assert_allclose(delta[0], [-0.2, -0.1])
    np.testing.assert_allclose(base, [2.0, 5.0])


def test_stage_rows_bootstrap_seeds_and_examples() -> None:
    from operators.mixture.horizon import extrapolation_weights
    from workflows.stages.validate import stage_rows

    rng = np.random.default_rng(0)
    n, S = 40, 2
    tokens = np.full(n, 10.0)
    before = np.full((2, S, n), 30.0)
    drop = np.array([1.0, 2.0, 3.0])  # summed-loss drop per example at steps 4, 8, 16 for the candidate
    after = np.broadcast_to(before[:, :, None, :], (2, S, 3, n)).copy()
    after[1] -= drop[None, :, None] + rng.normal(0, 0.5, (S, 3, n))
    coef, _ = extrapolation_weights([4, 8, 16], 160.0)
    rows = stage_rows((before, after), Objective(tokens, np.zeros(n, dtype=int), np.array([1.0])),
                      ["reference", "cand"], coef, 0.9, n_boot=200)
    assert rows["reference"]["gain"] == 0 and rows["reference"]["ci"] == [0.0, 0.0]
    c = rows["cand"]
    assert c["flat"] == pytest.approx(0.3, abs=0.02) and c["log_linear"] > c["flat"]
    assert c["ci"][0] < c["flat"] and c["ci"][1] > c["log_linear"]
