"""The deterministic blend: exact shares, seeded per-domain orders shared by every mixture."""

from __future__ import annotations

import numpy as np
import pytest

from operators.training.blend import DomainStream, blend_schedule
from operators.errors import ConfigError


def test_schedule_follows_the_weights_on_every_prefix() -> None:
    p = np.array([0.6, 0.25, 0.1, 0.05])
    s = blend_schedule(p, 400)
    for n in (10, 37, 100, 400):
        counts = np.bincount(s[:n], minlength=4)
        assert np.all(np.abs(counts - p * n) <= 1.0)
    assert np.bincount(s, minlength=4).tolist() == [240, 100, 40, 20]
    assert blend_schedule(np.array([0.0, 2.0]), 5).tolist() == [1] * 5


def test_schedule_rejects_bad_weights() -> None:
    for bad in (np.array([]), np.array([0.0, 0.0]), np.array([1.0, -0.1]), np.array([np.nan, 1.0])):
        with pytest.raises(ConfigError):
            blend_schedule(bad, 4)


def test_domain_stream_is_seeded_by_seed_and_name_and_covers_each_pass() -> None:
    a = [DomainStream(7, seed=3, domain="fr").next() for _ in range(1)]
    s1, s2 = DomainStream(7, seed=3, domain="fr"), DomainStream(7, seed=3, domain="fr")
    first = [s1.next() for _ in range(14)]
    assert first == [s2.next() for _ in range(14)] and first[0] == a[0]
    assert sorted(first[:7]) == list(range(7)) and sorted(first[7:]) == list(range(7))
    other = DomainStream(7, seed=3, domain="de")
    reseeded = DomainStream(7, seed=4, domain="fr")
    assert [other.next() for _ in range(7)] != first[:7]
    assert [reseeded.next() for _ in range(7)] != first[:7]
    with pytest.raises(ConfigError, match="'x'"):
        DomainStream(0, seed=0, domain="x")
