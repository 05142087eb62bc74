"""Pure parts of workflows/stages/mates.py: oracle label noise and the random fallback of selection."""

from __future__ import annotations

import numpy as np

from tests.operators.selection.test_quotas import gumbel_top_k
from workflows.stages.mates import RANDOM_TEMPERATURE, label_noise


def test_split_half_noise_overall_and_within_domains() -> None:
    rng = np.random.default_rng(0)
    domains = np.repeat(np.array(["a", "b", "c"]), 50)
    offset = np.repeat([0.0, 1.0, 2.0], 50)  # domains differ a lot, examples within them only by noise
    a, b = offset + 0.1 * rng.normal(size=150), offset + 0.1 * rng.normal(size=150)
    noise = label_noise(a, b, domains)
    assert noise["split_half_spearman"] > 0.8 and noise["reliability"] > noise["split_half_spearman"]
    assert abs(noise["split_half_spearman_within_domain"]) < 0.25  # nothing to select on inside a domain
    signal = rng.normal(size=150)
    good = label_noise(offset + signal + 0.1 * rng.normal(size=150), offset + signal, domains)
    assert good["split_half_spearman_within_domain"] > 0.9


def test_random_temperature_makes_selection_independent_of_scores() -> None:
    rng = np.random.default_rng(1)
    s1, s2 = rng.normal(size=500), rng.normal(size=500)
    pick = [set(gumbel_top_k(s, 100, RANDOM_TEMPERATURE, seed=3, higher_is_better=False).tolist()) for s in (s1, s2)]
    assert pick[0] == pick[1]
    assert set(gumbel_top_k(s1, 100, 0.5, seed=3, higher_is_better=False).tolist()) != pick[0]
