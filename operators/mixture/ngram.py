"""Hashed n-gram models for a DSIR-style importance baseline (Xie et al. 2023, "Data Selection for
Language Models via Importance Resampling").

Text → lower-cased word and punctuation tokens → unigrams and bigrams → stable CRC32 hashes into
``buckets`` bins. A bag-of-n-grams model of the target and of the raw pool (add-``smoothing``
counts) gives each n-gram a log importance ``log p_target − log p_raw``; an example's importance is the
MEAN over its n-grams (length-normalised, so one long document cannot dominate).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable

import numpy as np

from operators.errors import ConfigError

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def ngram_buckets(text: str, buckets: int) -> np.ndarray:
    """Bucket ids of the unigrams and bigrams of ``text`` (int64, may repeat)."""
    words = _TOKEN.findall(text.lower())
    grams = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
    return np.fromiter((zlib.crc32(g.encode("utf-8")) % buckets for g in grams), dtype=np.int64,
                       count=len(grams))


def ngram_counts(texts: Iterable[str], buckets: int) -> np.ndarray:
    """Summed bucket counts of many texts (float64, length ``buckets``)."""
    if buckets < 1:
        raise ConfigError(f"ngram buckets must be >= 1, got {buckets}")
    total = np.zeros(buckets, dtype=np.float64)
    for text in texts:
        ids = ngram_buckets(text, buckets)
        if ids.size:
            total += np.bincount(ids, minlength=buckets)
    return total


def log_importance(target_counts: np.ndarray, raw_counts: np.ndarray, smoothing: float = 1.0) -> np.ndarray:
    """Per-bucket log p_target − log p_raw with add-``smoothing`` estimates."""
    t = np.asarray(target_counts, dtype=np.float64) + smoothing
    r = np.asarray(raw_counts, dtype=np.float64) + smoothing
    if t.shape != r.shape or smoothing <= 0:
        raise ConfigError("log_importance: counts must have one shape and smoothing must be > 0")
    return np.log(t / t.sum()) - np.log(r / r.sum())


def example_importance(texts: Iterable[str], log_ratio: np.ndarray) -> np.ndarray:
    """Mean log importance over each text's n-grams (0 for a text without n-grams)."""
    buckets = log_ratio.size
    out = []
    for text in texts:
        ids = ngram_buckets(text, buckets)
        out.append(float(log_ratio[ids].mean()) if ids.size else 0.0)
    return np.asarray(out, dtype=np.float64)
