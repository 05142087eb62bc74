"""Tests for operators.selection.quotas (domain quotas, Gumbel-top-k, per-domain MATES selection)."""

from __future__ import annotations

import numpy as np
import pytest

from operators.errors import ConfigError
from operators.selection.quotas import domain_quotas, domain_seed, gumbel_top_k, select_per_domain


def test_quotas_proportional_when_uncapped() -> None:
    w = {"a": 0.5, "b": 0.3, "c": 0.2}
    q = domain_quotas(w, 10, {"a": 100, "b": 100, "c": 100})
    assert q == {"a": 5, "b": 3, "c": 2}
    # Largest remainder: 7 × (0.5, 0.3, 0.2) = (3.5, 2.1, 1.4) → floors 3,2,1; one extra to a.
    q7 = domain_quotas(w, 7, {"a": 100, "b": 100, "c": 100})
    assert q7 == {"a": 4, "b": 2, "c": 1}
    # Every quota is within one of its exact share.
    rng = np.random.default_rng(0)
    for _ in range(50):
        raw = rng.random(5)
        weights = {f"d{i}": float(x) for i, x in enumerate(raw)}
        budget = int(rng.integers(0, 500))
        q = domain_quotas(weights, budget, {d: 10_000 for d in weights})
        assert sum(q.values()) == budget
        for d, x in weights.items():
            assert abs(q[d] - budget * x / raw.sum()) < 1.0


def test_quotas_cap_and_redistribute_by_weight() -> None:
    w = {"a": 0.6, "b": 0.3, "c": 0.1}
    q = domain_quotas(w, 100, {"a": 20, "b": 1000, "c": 1000})
    assert q["a"] == 20
    assert sum(q.values()) == 100
    # The 80 left go 3:1 to b and c.
    assert (q["b"], q["c"]) == (60, 20)
    # Cascading caps.
    q2 = domain_quotas(w, 100, {"a": 20, "b": 30, "c": 1000})
    assert q2 == {"a": 20, "b": 30, "c": 50}


def test_quotas_sum_to_min_of_budget_and_availability() -> None:
    rng = np.random.default_rng(1)
    for _ in range(100):
        names = [f"d{i}" for i in range(int(rng.integers(1, 6)))]
        weights = {d: float(rng.random()) * (rng.random() > 0.2) for d in names}
        avail = {d: int(rng.integers(0, 40)) for d in names}
        budget = int(rng.integers(0, 150))
        q = domain_quotas(weights, budget, avail)
        assert sum(q.values()) == min(budget, sum(avail.values()))
        assert all(0 <= q[d] <= avail[d] for d in names)
        # Zero-weight domains only get data once every positive-weight domain is full.
        if any(q[d] > 0 for d in names if weights[d] == 0):
            assert all(q[d] == avail[d] for d in names if weights[d] > 0)


def test_quotas_reject_bad_input() -> None:
    with pytest.raises(ConfigError, match="missing"):
        domain_quotas({"x": 1.0}, 5, {"a": 3})
    with pytest.raises(ConfigError):
        domain_quotas({"a": -1.0}, 5, {"a": 3})
    with pytest.raises(ConfigError):
        domain_quotas({"a": 1.0}, -1, {"a": 3})


def test_gumbel_zero_temperature_is_top_k() -> None:
    scores = np.random.default_rng(2).normal(size=200)
    for k in (0, 1, 17, 200):
        top = gumbel_top_k(scores, k, temperature=0.0, seed=5)
        assert np.array_equal(top, np.argsort(-scores, kind="stable")[:k])
        low = gumbel_top_k(scores, k, temperature=0.0, seed=5, higher_is_better=False)
        assert np.array_equal(low, np.argsort(scores, kind="stable")[:k])
    # A tiny positive temperature converges to the same answer.
    assert np.array_equal(gumbel_top_k(scores, 17, 1e-9, seed=5), np.argsort(-scores)[:17])


def test_gumbel_selection_favours_high_scores() -> None:
    scores = np.linspace(-2.0, 2.0, 100)
    k, tau = 20, 0.5
    counts = np.zeros(100)
    sel_means = []
    for seed in range(300):
        idx = gumbel_top_k(scores, k, tau, seed)
        assert len(set(idx.tolist())) == k
        counts[idx] += 1
        sel_means.append(scores[idx].mean())
    # Coarse monotonicity: each score quintile is picked more often than the one below it.
    by_quintile = counts.reshape(5, 20).sum(axis=1)
    assert np.all(np.diff(by_quintile) > 0)
    assert np.mean(sel_means) > scores.mean() + 0.5 * scores.std()
    # It is stochastic: not always the deterministic top-k.
    assert counts[:80].sum() > 0
    # Lower-is-better flips the preference.
    low = np.mean(
        [scores[gumbel_top_k(scores, k, tau, s, higher_is_better=False)].mean() for s in range(100)]
    )
    assert low < scores.mean() - 0.5 * scores.std()


def test_gumbel_returns_indices_sorted_by_perturbed_key() -> None:
    scores = np.random.default_rng(3).normal(size=50)
    idx = gumbel_top_k(scores, 10, 0.7, seed=11)
    key = scores / 0.7 + np.random.default_rng(11).gumbel(size=50)
    assert np.array_equal(idx, np.argsort(-key)[:10])
    assert np.array_equal(idx, gumbel_top_k(scores, 10, 0.7, seed=11))
    with pytest.raises(ConfigError):
        gumbel_top_k(scores, 51, 0.7, seed=0)
    with pytest.raises(ConfigError):
        gumbel_top_k(scores, 5, -1.0, seed=0)


def _pool(n: int = 90) -> tuple[list[str], list[str], np.ndarray]:
    rng = np.random.default_rng(4)
    domains = [["web", "code", "books"][i % 3] for i in range(n)]
    ids = [f"{d}-{i}" for i, d in enumerate(domains)]
    return ids, domains, rng.normal(size=n)


def test_select_per_domain_respects_quotas_and_domains() -> None:
    ids, domains, scores = _pool()
    quotas = {"web": 10, "code": 5, "books": 0}
    out = select_per_domain(ids, domains, scores, quotas, temperature=0.5, seed=1, higher_is_better=False)
    assert {d: len(v) for d, v in out.items()} == quotas
    dom_of = dict(zip(ids, domains))
    for d, chosen in out.items():
        assert all(dom_of[i] == d for i in chosen)
        assert len(set(chosen)) == len(chosen)
    # τ = 0: exactly the lowest-scoring examples of each domain.
    exact = select_per_domain(ids, domains, scores, quotas, 0.0, seed=1, higher_is_better=False)
    score_of = dict(zip(ids, scores))
    for d, q in quotas.items():
        pool = sorted((i for i in ids if dom_of[i] == d), key=lambda i: score_of[i])
        assert exact[d] == pool[:q]


def test_select_per_domain_deterministic_by_seed() -> None:
    ids, domains, scores = _pool()
    quotas = {"web": 10, "code": 10}
    a = select_per_domain(ids, domains, scores, quotas, 1.0, seed=7, higher_is_better=True)
    b = select_per_domain(ids, domains, scores, quotas, 1.0, seed=7, higher_is_better=True)
    c = select_per_domain(ids, domains, scores, quotas, 1.0, seed=8, higher_is_better=True)
    assert a == b
    assert a != c
    # Per-domain seeds are stable values (not Python's salted hash) and differ across domains.
    assert domain_seed(7, "web") == domain_seed(7, "web") != domain_seed(7, "code")
    assert domain_seed(7, "web") != domain_seed(8, "web")


def test_select_per_domain_rejects_oversized_quota() -> None:
    ids, domains, scores = _pool(9)
    with pytest.raises(ConfigError, match="web"):
        select_per_domain(ids, domains, scores, {"web": 4}, 0.5, 0, True)
    with pytest.raises(ConfigError):
        select_per_domain(ids, domains[:-1], scores, {"web": 1}, 0.5, 0, True)


def test_select_per_domain_standardises_raw_scale_scores() -> None:
    """MATES scores are loss changes (std ≈ 0.003); selection must still favour low ΔL, not be random."""
    rng = np.random.default_rng(12)
    n, q = 3000, 300
    scores = rng.normal(-0.01, 0.003, size=n)
    ids = [f"web-{i}" for i in range(n)]
    picked = select_per_domain(ids, ["web"] * n, scores, {"web": q}, 0.5, seed=2, higher_is_better=False)
    sel = scores[[int(i.split("-")[1]) for i in picked["web"]]]
    random_se = scores.std() / np.sqrt(q) * np.sqrt(1 - q / n)
    assert sel.mean() < scores.mean() - 10 * random_se
    # τ is in units of the domain's spread: rescaling the scores does not change the selection
    again = select_per_domain(ids, ["web"] * n, scores * 1000, {"web": q}, 0.5, seed=2, higher_is_better=False)
    assert again == picked


def test_threshold_bin_splits_quota_at_the_boundary_bin() -> None:
    from operators.selection.quotas import key_histogram, key_range, threshold_bin

    keys = np.random.default_rng(0).gumbel(size=1000)
    lo, hi = key_range(-1.0, 1.0, 1.0, higher_is_better=True)
    hist = key_histogram(keys, lo, hi, bins=64)
    for quota in (0, 1, 37, 1000):
        b, above = threshold_bin(hist, quota)
        assert above == int(hist[b + 1 :].sum()) and above < quota <= above + (hist[b] if b < 64 else 0) or quota == 0
