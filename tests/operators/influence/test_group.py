import numpy as np
import pytest
from scipy.stats import spearmanr

import operators.influence.group as inf
from operators.errors import ConfigError
from operators.influence.group import (
    BootstrapSums,
    bootstrap_intervals,
    combine_targets,
    normalize_per_target,
    per_example_scores,
    poisson_weights,
    shard_seed,
    spearman,
    target_token_sums,
    token_weighted_means,
)

DOMAINS = ["web", "code", "books"]


def _toy(n_per: tuple[int, ...] = (300, 200, 100), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(loc=i, scale=1.0 + i, size=(n, 3)) for i, n in enumerate(n_per)])
    labels = np.repeat(np.array(DOMAINS[: len(n_per)]), n_per)
    perm = rng.permutation(labels.size)
    return scores[perm], labels[perm]


def _means(scores: np.ndarray, labels: np.ndarray, order: list[str]) -> np.ndarray:
    """GI (K, V): the mean score of each domain."""
    return np.stack([scores[labels == d].mean(axis=0) for d in order])


def _poisson_ci(scores: np.ndarray, labels: np.ndarray, weights, n_boot: int, seed: int = 0, shards: int = 1,
                order: list[str] = DOMAINS, **kwargs) -> dict:
    """Bootstrap CIs the way the aggregation computes them: Poisson(1) weights per shard, summed, folded."""
    codes = np.array([order.index(x) for x in labels])
    boot = BootstrapSums(n_boot, len(order), scores.shape[1])
    for i, idx in enumerate(np.array_split(np.arange(len(codes)), shards)):
        boot.merge(BootstrapSums(n_boot, len(order), scores.shape[1]).update(
            scores[idx], codes[idx], poisson_weights(shard_seed(seed, f"s{i}"), idx.size, n_boot)))
    return bootstrap_intervals(boot.gi(_means(scores, labels, order)), weights, **kwargs)


def test_per_example_scores_blockwise_matches_matmul(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inf, "_BLOCK_ROWS", 7)
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(45, 16)).astype(np.float32)
    dirs = rng.normal(size=(3, 16))
    out = per_example_scores(feats, dirs)
    np.testing.assert_allclose(out, feats.astype(np.float64) @ dirs.T, rtol=1e-12, atol=1e-12)
    with pytest.raises(ConfigError, match="feature dim"):
        per_example_scores(feats, dirs[:, :8])


def test_scores_have_the_benefit_sign() -> None:
    rng = np.random.default_rng(3)
    t = rng.normal(size=8)
    # "helpful" examples have gradients aligned with the target direction, "harmful" ones anti-aligned
    helpful = t + 0.1 * rng.normal(size=(40, 8))
    harmful = -t + 0.1 * rng.normal(size=(60, 8))
    scores = per_example_scores(np.vstack([helpful, harmful]), t[None, :])
    assert scores.shape == (100, 1)
    assert np.all(scores[:40] > 0) and np.all(scores[40:] < 0)
    np.testing.assert_allclose(scores[:40, 0], helpful @ t, rtol=1e-12)


def test_zscore_per_target_removes_scale_and_handles_constant_columns() -> None:
    rng = np.random.default_rng(4)
    gi = rng.normal(size=(5, 3))
    gi[:, 1] *= 1e6  # a target with a huge gradient norm must not dominate after normalisation
    gi[:, 2] = 0.1  # constant column
    z = normalize_per_target(gi, "zscore")
    np.testing.assert_allclose(z[:, :2].mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(z[:, :2].std(0), 1, atol=1e-12)
    assert np.all(z[:, 2] == 0) and np.all(np.isfinite(z))
    affine = gi * np.array([3.0, 0.5, 1.0]) + np.array([10.0, -2.0, 0.0])
    np.testing.assert_allclose(normalize_per_target(affine, "zscore"), z, atol=1e-9)
    raw = normalize_per_target(gi, "none")
    np.testing.assert_array_equal(raw, gi)
    assert raw is not gi
    with pytest.raises(ConfigError, match="normalize"):
        normalize_per_target(gi, "rank")  # type: ignore[arg-type]


def test_loss_normalisation_keeps_each_targets_nats_scale() -> None:
    """`loss` divides every target by ONE shared scale: a hard target (larger influence in nats) keeps
    its larger say in the combined score, which z-scoring would erase."""
    easy = np.array([0.01, 0.00, 0.00])  # low-loss target: small effects, prefers domain 0
    hard = np.array([0.05, 0.10, 0.00])  # high-loss target: 10x larger effects, prefers domain 1
    gi = np.stack([easy, hard], axis=1)
    loss = normalize_per_target(gi, "loss")
    c = gi[1, 1] / loss[1, 1]
    assert c > 0
    np.testing.assert_allclose(loss * c, gi, atol=1e-15)  # one positive scale for every entry
    assert np.argmax(combine_targets(loss, [1.0, 1.0])) == 1  # what the summed nats prefer
    assert np.argmax(combine_targets(normalize_per_target(gi, "zscore"), [1.0, 1.0])) == 0  # targets equal
    np.testing.assert_allclose(normalize_per_target(gi, "max").max(axis=0), 1.0)


def test_balanced_normalisation_honours_weights_on_each_targets_scale() -> None:
    """`balanced` (the default) divides each target by its own across-domain std: equally weighted
    targets count equally whatever their raw scale; with one target it equals `loss`."""
    easy = np.array([0.01, 0.00, 0.00])
    hard = np.array([0.05, 0.10, 0.00])
    gi = np.stack([easy, hard], axis=1)
    bal = normalize_per_target(gi, "balanced")
    np.testing.assert_allclose(bal.std(axis=0), 1.0)
    np.testing.assert_allclose(bal * gi.std(axis=0), gi, atol=1e-15)
    assert np.argmax(combine_targets(bal, [1.0, 1.0])) == 0  # the easy target's favourite is not drowned
    assert np.argmax(combine_targets(bal, [1.0, 9.0])) == 1  # weights still decide
    one = gi[:, :1]
    np.testing.assert_allclose(normalize_per_target(one, "balanced"), normalize_per_target(one, "loss"))
    np.testing.assert_allclose(normalize_per_target(np.zeros((3, 2)), "balanced"), 0.0)
    assert normalize_per_target(gi) is not None and np.allclose(normalize_per_target(gi), bal)


def test_combine_targets_normalises_weights() -> None:
    gi = np.array([[1.0, -1.0], [0.0, 2.0], [-1.0, -1.0]])
    np.testing.assert_allclose(combine_targets(gi, [1.0, 3.0]), gi @ np.array([0.25, 0.75]))
    np.testing.assert_allclose(combine_targets(gi, [2.0, 6.0]), combine_targets(gi, [1.0, 3.0]))
    for bad in ([1.0, -1.0], [0.0, 0.0], [1.0, np.nan], [1.0]):
        with pytest.raises(ConfigError, match="target weights"):
            combine_targets(gi, bad)


def test_bootstrap_cis_contain_estimates_and_narrow_with_more_samples() -> None:
    small_s, small_l = _toy((40, 40, 40), seed=5)
    big_s, big_l = _toy((4000, 4000, 4000), seed=5)
    w = [1.0, 1.0, 2.0]
    widths = []
    for s, lab in ((small_s, small_l), (big_s, big_l)):
        ci = _poisson_ci(s, lab, w, n_boot=200, confidence=0.9, normalize="none")
        gi = _means(s, lab, DOMAINS)
        score = combine_targets(gi, w)
        assert np.all(ci["gi_low"] <= gi) and np.all(gi <= ci["gi_high"])
        assert np.all(ci["score_low"] <= score) and np.all(score <= ci["score_high"])
        widths.append(ci["gi_high"] - ci["gi_low"])
    # 100x more examples → CI about 10x narrower
    ratio = widths[1] / widths[0]
    assert np.all(ratio < 0.2) and np.all(ratio > 0.05)


def test_bootstrap_is_deterministic_by_seed_and_maps_extra() -> None:
    scores, labels = _toy((50, 50, 50), seed=6)
    scores[labels == "books"] = 0.25  # every reweighting of a constant domain has the same mean
    a = _poisson_ci(scores, labels, [1, 1, 1], n_boot=50, seed=3, shards=2, normalize="none")
    b = _poisson_ci(scores, labels, [1, 1, 1], n_boot=50, seed=3, shards=2, normalize="none")
    c = _poisson_ci(scores, labels, [1, 1, 1], n_boot=50, seed=4, shards=2, normalize="none")
    np.testing.assert_array_equal(a["gi_low"], b["gi_low"])
    assert not np.array_equal(a["gi_low"], c["gi_low"])
    np.testing.assert_allclose(a["gi_low"][2], 0.25)
    np.testing.assert_allclose(a["gi_high"][2], 0.25)

    def softmax(gi: np.ndarray) -> np.ndarray:  # extra gets a replicate's raw GI (K, V)
        s = combine_targets(normalize_per_target(gi), [1, 1, 1])
        e = np.exp(s - s.max())
        return e / e.sum()

    d = _poisson_ci(scores, labels, [1, 1, 1], n_boot=100, seed=3, extra=softmax)
    point = softmax(_means(scores, labels, DOMAINS))
    assert d["extra_low"].shape == (3,)
    assert np.all(d["extra_low"] <= point + 1e-12) and np.all(point <= d["extra_high"] + 1e-12)


def test_bootstrap_interval_coverage_near_nominal() -> None:
    rng = np.random.default_rng(7)
    hits = 0
    trials = 40
    for t in range(trials):
        scores = rng.exponential(size=(120, 1))  # true mean 1 for both domains
        labels = np.array(["web", "code"] * 60)
        ci = _poisson_ci(scores, labels, [1.0], n_boot=200, seed=t, order=["web", "code"], confidence=0.9,
                         normalize="none")
        hits += int(ci["gi_low"][0, 0] <= 1.0 <= ci["gi_high"][0, 0])
    assert 0.7 <= hits / trials <= 1.0


def test_spearman_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(9)
    a = rng.integers(0, 4, size=30).astype(float)
    b = a + rng.normal(size=30)
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ConfigError):
        spearman([1, 2], [1, 2, 3])


def test_token_weighted_target_sums_for_mean_and_sum_reductions() -> None:
    feats = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    n_tok = np.array([1, 3, 4])
    names = np.array(["a", "a", "b"])
    sums, tokens, counts = target_token_sums(feats, n_tok, names, ["a", "b"], "mean")
    np.testing.assert_allclose(token_weighted_means(sums, tokens, ["a", "b"]), [[0.25, 0.75], [2.0, 2.0]])
    np.testing.assert_array_equal(counts, [2, 1])
    sums, tokens, _ = target_token_sums(feats, n_tok, names, ["a", "b"], "sum")
    np.testing.assert_allclose(token_weighted_means(sums, tokens, ["a", "b"]), [[0.25, 0.25], [0.5, 0.5]])
    with pytest.raises(ConfigError, match="target sets with no examples: \\['c'\\]"):
        token_weighted_means(np.zeros((3, 2)), np.array([1.0, 1.0, 0.0]), ["a", "b", "c"])
    with pytest.raises(ConfigError, match="loss_reduction"):
        target_token_sums(feats, n_tok, names, ["a", "b"], "max")  # type: ignore[arg-type]


def test_poisson_weights_are_batch_invariant_with_unit_moments() -> None:
    whole = poisson_weights(shard_seed(3, "shard-a"), 5000, 37)
    rng = shard_seed(3, "shard-a")
    split = np.concatenate([poisson_weights(rng, n, 37) for n in (1, 999, 4000)])
    np.testing.assert_array_equal(whole, split)
    assert abs(whole.mean() - 1) < 0.01 and abs(whole.var() - 1) < 0.02
    assert not np.array_equal(whole, poisson_weights(shard_seed(3, "shard-b"), 5000, 37))


def test_poisson_bootstrap_sums_merge_across_shards_and_cover() -> None:
    scores, labels = _toy((400, 300, 200), seed=11)
    codes = np.array([DOMAINS.index(x) for x in labels])
    parts = []
    for i, idx in enumerate(np.array_split(np.arange(len(codes)), 3)):
        w = poisson_weights(shard_seed(0, f"s{i}"), idx.size, 300)
        parts.append(BootstrapSums(300, 3, 3).update(scores[idx], codes[idx], w))
    merged = parts[0].merge(parts[1]).merge(parts[2])
    gi = _means(scores, labels, DOMAINS)
    ci = bootstrap_intervals(merged.gi(gi), [1, 1, 1], confidence=0.9, normalize="none")
    assert np.all(ci["gi_low"] <= gi) and np.all(gi <= ci["gi_high"])
    # the Poisson CI width matches the normal approximation 2·1.645·σ/√n within 20%
    sd = np.stack([scores[labels == d].std(0) / np.sqrt((labels == d).sum()) for d in DOMAINS])
    np.testing.assert_allclose(ci["gi_high"] - ci["gi_low"], 2 * 1.645 * sd, rtol=0.2)
