"""Hashed n-gram importance (DSIR-style baseline)."""

from __future__ import annotations

import numpy as np

from operators.mixture.ngram import example_importance, log_importance, ngram_buckets, ngram_counts


def test_hashing_is_stable_and_counts_unigrams_and_bigrams() -> None:
    ids = ngram_buckets("Hello, world", 1000)
    assert ids.size == 3 + 2  # hello , world + 2 bigrams
    assert ngram_buckets("hello, WORLD", 1000).tolist() == ids.tolist()
    assert ngram_counts(["a b", "a"], 50).sum() == 4


def test_target_like_text_gets_higher_importance() -> None:
    target = ["der hund läuft schnell über die straße"] * 5
    raw = target + ["def f(x): return x + 1"] * 20 + ["the cat sat on the mat"] * 20
    ratio = log_importance(ngram_counts(target, 4096), ngram_counts(raw, 4096))
    imp = example_importance(["die straße und der hund", "def g(y): return y", ""], ratio)
    assert imp[0] > imp[1] and imp[2] == 0.0
    assert np.isfinite(imp).all()
