"""The `full` config's features end to end: K-FAC preconditioning, TiKMiX-M, MATES selection, trainer formats."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from operators.io import storage
from operators.manifest.schema import parse_manifest
from tests.workflows.helpers import fast_overrides
from workflows.config import load_config
from workflows.mixture_refresh import run_mixture_refresh

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full_run(ray_cluster, model_cache, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("full"))
    cfg = load_config("full", fast_overrides(out, model_cache, "mixture.options.tikmix_m.candidates=8",
                                             "mixture.options.tikmix_m.steps=4", "mates.oracle_samples=80"))
    return cfg, run_mixture_refresh(cfg)


def test_kfac_influence_and_tikmix_m_choice(full_run):
    cfg, result = full_run
    manifest = parse_manifest(storage.read_bytes(result.manifest_uri))
    assert manifest.influence.preconditioner == "kfac"
    assert manifest.solver["name"] == "tikmix_m"
    assert result.report["published"] in result.report["validation"]["candidates"]
    report = result.report["solvers"]["tikmix_m"]
    from workflows.solvers.base import SOLVERS

    opts = SOLVERS.configured("tikmix_m", cfg.mixture.options).options
    k = len(result.weights)
    # Latin Hypercube candidates + TiKMiX-D's answer + Dirichlet exploration (+ up to one heavy mixture per
    # domain with positive evidence) beyond the box
    assert 8 + 1 + opts.explore <= len(report["labels"]) <= 8 + 1 + opts.explore + k * opts.explore_heavy
    assert report["split"] == "validation_select" and report["label_noise"]["seed_std"] > 0
    assert np.isfinite(report["regressor"]["cv_rmse"])
    # TiKMiX-M returns its searched mixture only when it measured better, else TiKMiX-D's answer
    expected = report["tikmix_m"] if not report["fell_back"] else report["tikmix_d"]
    assert report["weights"] == pytest.approx(expected) and report["reason"]
    # it is one of the validated candidates
    validated = result.report["validation"]["candidates"]
    assert validated[result.report["validation"]["aliases"].get("tikmix_m", "tikmix_m")]["weights"] == \
        pytest.approx(report["weights"], abs=1e-6)
    assert all(0.02 - 1e-9 <= w <= 0.6 + 1e-9 for w in result.weights.values())


def test_mates_selection_respects_quotas(full_run):
    cfg, result = full_run
    manifest = parse_manifest(storage.read_bytes(result.manifest_uri))
    selection = manifest.selection
    assert selection is not None and selection.method == "mates"
    quotas = result.report["mates"]["quotas"]
    pool = result.report["mates"]["pool_size"]
    assert sum(quotas.values()) == round(cfg.mates.selection_ratio * pool)
    for domain, entry in selection.domains.items():
        ids = storage.read_text(entry.uri).split()
        assert len(ids) == entry.count == quotas[domain]
        assert len(set(ids)) == len(ids)
        assert all(i.startswith(f"{domain}-") for i in ids)  # bundled ids are <domain>-<n>
    assert selection.params["oracle_probes"] >= 75
    metrics = selection.params["model_metrics"]
    assert metrics["model"] == "lm_ridge" and metrics["cv_folds"] == 5 and "cv_spearman" in metrics
    assert selection.params["usable"] == metrics["usable"] == result.report["mates"]["usable"]
    assert -1 <= selection.params["label_noise"]["split_half_spearman"] <= 1


def test_trainer_formats_agree_with_manifest(full_run):
    _, result = full_run
    folder = os.path.dirname(result.manifest_uri)
    manifest = parse_manifest(storage.read_bytes(result.manifest_uri))
    weights = {d.name: d.weight for d in manifest.domains if d.weight > 0}
    hf = json.loads(open(os.path.join(folder, "hf_interleave.json")).read())
    assert dict(zip(hf["datasets"], hf["probabilities"])) == pytest.approx(weights)
    blend = open(os.path.join(folder, "megatron_blend.txt")).read().split()
    assert {blend[i + 1]: float(blend[i]) for i in range(0, len(blend), 2)} == pytest.approx(weights)
    yaml_manifest = parse_manifest(open(os.path.join(folder, "manifest.yaml")).read())
    assert yaml_manifest == manifest
