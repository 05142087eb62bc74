"""Tests for operators.manifest.formats.huggingface: interleave_datasets arguments, probabilities sum to 1."""

from __future__ import annotations

import json
import math

import numpy as np

from operators.manifest.formats import FORMATS
from operators.manifest.formats.huggingface import hf_interleave
from operators.manifest.schema import Manifest
from tests.operators.manifest.helpers import manifest_data


def test_hf_interleave_exact_and_sums_to_one() -> None:
    m = Manifest.model_validate(manifest_data((0.5, 0.25, 0.25)))
    expected = {
        "datasets": ["web", "code", "books"],
        "probabilities": [0.5, 0.25, 0.25],
        "stopping_strategy": "all_exhausted",
        "seed": 7,
    }
    assert hf_interleave(m) == expected
    assert json.loads(FORMATS.get("hf_interleave").render(m, None)) == expected
    assert hf_interleave(m, seed=3)["seed"] == 3
    zero = Manifest.model_validate(manifest_data((0.75, 0.0, 0.25)))
    assert hf_interleave(zero)["datasets"] == ["web", "books"]
    rng = np.random.default_rng(0)
    random_cases = [tuple(rng.dirichlet(np.ones(9) * 0.3)) for _ in range(20)]
    cases = [(1 / 3, 1 / 3, 1 / 3), (0.1, 0.2, 0.7), *random_cases]
    for weights in cases:
        names = tuple(f"d{i}" for i in range(len(weights)))
        p = hf_interleave(Manifest.model_validate(manifest_data(weights, names)))["probabilities"]
        kept = [w for w in weights if w > 0]
        assert sum(p) == 1.0 and sum(reversed(p)) == 1.0 and math.fsum(p) == 1.0 and float(np.sum(p)) == 1.0
        np.testing.assert_allclose(p, np.array(kept) / sum(kept), rtol=0, atol=1e-15)
