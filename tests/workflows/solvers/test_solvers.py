"""Solver registry and the solvers' behaviour on hand-built problems (no featurization needed)."""

from __future__ import annotations

import numpy as np
import pytest

from operators.mixture.budget import Budget
from operators.errors import ConfigError
from workflows.baselines import BASELINES
from workflows.config import load_config
from workflows.solvers import SOLVERS, MixtureProblem

DOMAINS = ["code", "docs", "legal", "web"]


def _problem(gi: np.ndarray, previous: dict | None = None, tokens: np.ndarray | None = None,
             budget: float = 1e6, upper: float = 0.6) -> MixtureProblem:
    k = len(DOMAINS)
    tokens = np.full(k, 1e9) if tokens is None else tokens
    b = Budget(budget, tokens, max_epochs=None)
    prior = np.full(k, 1 / k)
    return MixtureProblem(domains=DOMAINS, targets=["t0", "t1"], target_weights=np.array([0.5, 0.5]), gi=gi,
                          normalize="loss", lower=np.full(k, 0.02), upper=np.minimum(upper, b.reuse_upper()),
                          prior=prior, prior_kind="uniform", reference=prior, reference_kind="uniform",
                          budget=b, previous_weights=previous, info={"beta": 2.0})


GI = np.array([[0.3, 0.1], [0.5, 0.4], [0.0, -0.1], [0.2, 0.1]])


def test_registry_names_and_unknown_names_fail_in_config() -> None:
    assert {"tikmix_d", "tikmix_d_paper", "tikmix_m"} <= set(SOLVERS.names())
    assert {"uniform", "tokens", "dsir"} <= set(BASELINES.names())
    with pytest.raises(ConfigError, match="unknown solver 'nope'"):
        load_config("default", ["mixture.solver=nope"])
    with pytest.raises(ConfigError, match="options.tikmix_d.beta"):
        load_config("default", ["mixture.options.tikmix_d.beta=-1"])
    with pytest.raises(ConfigError, match="unknown baseline"):
        load_config("default", ["mixture.baselines=[uniform,bogus]"])


@pytest.mark.parametrize("name", ["tikmix_d", "tikmix_d_paper"])
def test_solvers_return_feasible_mixtures_favouring_influential_domains(name: str) -> None:
    p = _problem(GI)
    res = SOLVERS.build(name).solve(p)
    w = res.weights
    assert abs(w.sum() - 1) < 1e-9 and np.all(w >= p.lower - 1e-9) and np.all(w <= p.upper + 1e-9)
    assert np.argmax(w) == 1 and w[2] == pytest.approx(w.min())
    assert isinstance(res.report, dict) and res.report


def _chain(options: dict, refreshes: int = 6) -> list[np.ndarray]:
    solver = SOLVERS.build("tikmix_d", options)
    previous, out = None, []
    for _ in range(refreshes):
        w = solver.solve(_problem(GI, previous)).weights
        previous = dict(zip(DOMAINS, w.tolist()))
        out.append(w)
    return out


def test_fixed_prior_does_not_compound_across_refreshes() -> None:
    chain = _chain({"anchor": "prior"})
    for w in chain[1:]:
        np.testing.assert_allclose(w, chain[0], atol=1e-9)
    assert chain[-1].max() < 0.6 - 1e-3  # not pinned to the cap


def test_damped_previous_anchor_converges_instead_of_pinning_to_caps() -> None:
    undamped = _chain({"anchor": "previous", "damping": 0.0}, refreshes=8)
    damped = _chain({"anchor": "previous", "damping": 0.5}, refreshes=12)
    assert undamped[-1].max() == pytest.approx(0.6)  # the old behaviour: compounding to the cap
    assert np.abs(damped[-1] - damped[-2]).max() < 1e-4  # a fixed point

    def entropy(w: np.ndarray) -> float:
        return float(-(w * np.log(w)).sum())

    assert entropy(damped[-1]) > entropy(undamped[-1]) + 0.05  # the floors are not where it ends
    assert np.sum(damped[-1] <= 0.02 + 1e-9) < np.sum(undamped[-1] <= 0.02 + 1e-9)


def test_small_domain_weight_respects_the_budget() -> None:
    gi = np.array([[0.9, 0.9], [0.2, 0.2], [0.0, 0.0], [0.1, 0.1]])
    plenty = SOLVERS.build("tikmix_d").solve(_problem(gi)).weights
    scarce_tokens = np.array([2e4, 1e9, 1e9, 1e9])  # code = 2% of the stage's tokens
    scarce = SOLVERS.build("tikmix_d").solve(_problem(gi, tokens=scarce_tokens)).weights
    assert plenty[0] > 0.5 and scarce[0] < plenty[0]
    p = _problem(gi, tokens=scarce_tokens)
    assert p.epochs(scarce)["code"] < p.epochs(plenty)["code"]


def test_uniform_and_tokens_baselines() -> None:
    tokens = np.array([1e6, 3e6, 2e6, 2e6])
    p = _problem(GI, tokens=tokens, budget=1e5)
    np.testing.assert_allclose(BASELINES.build("uniform").solve(p).weights, 0.25)
    np.testing.assert_allclose(BASELINES.build("tokens").solve(p).weights, tokens / tokens.sum())
