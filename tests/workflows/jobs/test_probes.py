"""The probe cache: a repeated (mixture, seed) probe on the same checkpoint and examples is read back, not
trained again; anything that changes the probe's inputs misses."""

from __future__ import annotations

import numpy as np
import pytest

from cluster.runtime import WorkerLayout
from workflows.jobs.probes import MixtureProber, ProbeCache, measure_trajectories
from workflows.mixture_refresh import resolve_model_uri
from workflows.run.plan import build_plan
from workflows.stages.featurize import model_source
from workflows.stages.problem import build_problem
from workflows.stages.validate import _pools, labelled_reference

from tests.workflows.helpers import fast_config

DOMAINS = ["changelog", "code", "config", "docs", "legal"]


pytestmark = pytest.mark.slow  # trains the tiny model


@pytest.fixture(scope="module")
def prober_parts(tmp_path_factory, model_cache):
    cfg = fast_config(str(tmp_path_factory.mktemp("probes")), model_cache, "mixture.validation.steps=2",
                      "mixture.validation.reference_examples=16", "mixture.validation.max_pool=16")
    plan = build_plan(cfg)
    problem = build_problem(cfg, DOMAINS, {d: 100_000 for d in DOMAINS}, None)
    model = model_source(cfg, resolve_model_uri(cfg))
    tokenizer = model.tokenizer()
    pools, _ = _pools(cfg, plan, problem, tokenizer)
    ref, _ = labelled_reference(cfg, plan, tokenizer, 16, 0)
    return cfg, model, pools, ref


def _prober(parts, **change) -> MixtureProber:
    cfg, model, pools, ref = parts
    spec = cfg.mixture.validation
    kw = dict(steps=2, batch_size=4, probe=spec.probe, points=[1, 2])
    kw.update(change)
    return MixtureProber(model, DOMAINS, {0: pools, 1: pools}, ref, **kw)


def test_repeated_probes_are_read_back_and_equal(prober_parts, tmp_path):
    layout = WorkerLayout(1, 0.0, 1.0)  # in-process (no Ray in this test)
    prober = _prober(prober_parts)
    mixtures = [np.full(5, 0.2), np.array([0.6, 0.1, 0.1, 0.1, 0.1])]
    first_cache = ProbeCache(str(tmp_path / "probes"), None, prober)
    before1, after1 = measure_trajectories(prober, mixtures, [0, 1], layout, first_cache)
    assert (first_cache.hits, first_cache.misses) == (0, 4)
    again = ProbeCache(str(tmp_path / "probes"), None, _prober(prober_parts))  # a later refresh
    before2, after2 = measure_trajectories(_prober(prober_parts), [mixtures[1], np.array([0.1, 0.6, 0.1, 0.1, 0.1])],
                                           [0, 1], layout, again)
    assert (again.hits, again.misses) == (2, 2)  # the repeated mixture is reused, the new one trained
    np.testing.assert_array_equal(before2[0], before1[1])
    np.testing.assert_array_equal(after2[0], after1[1])
    uncached_b, uncached_a = measure_trajectories(prober, mixtures[1:], [0, 1], layout)
    np.testing.assert_allclose(uncached_a[0], after1[1], rtol=1e-5)  # the cache holds what a probe measures


def test_anything_that_changes_a_probe_changes_its_address(prober_parts, tmp_path):
    base = ProbeCache(str(tmp_path), None, _prober(prober_parts))
    w = [0.2] * 5
    others = [ProbeCache(str(tmp_path), None, _prober(prober_parts, steps=3, points=[1, 3])),
              ProbeCache(str(tmp_path), None, _prober(prober_parts, batch_size=2))]
    cfg, model, pools, ref = prober_parts
    fewer = {d: (p[0][:-1], p[1][:-1]) for d, p in pools.items()}
    others.append(ProbeCache(str(tmp_path), None, MixtureProber(model, DOMAINS, {0: fewer, 1: fewer}, ref, 2, 4,
                                                                 cfg.mixture.validation.probe, points=[1, 2])))
    addresses = {base.uri(w, 0), base.uri(w, 1), base.uri([0.21, 0.19, 0.2, 0.2, 0.2], 0)}
    addresses |= {c.uri(w, 0) for c in others}
    assert len(addresses) == 6
