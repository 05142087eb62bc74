"""Scheduled refresh: latest checkpoint under a root, previous manifest, stamped idempotent run ids."""

from __future__ import annotations

import shutil

import pytest

from operators.io import storage
from operators.manifest.schema import parse_manifest
from tests.workflows.helpers import fast_config
from workflows.mixture_refresh import resolve_model_uri
from workflows.refresh import run_scheduled_refresh
from workflows.stages.problem import load_previous

pytestmark = pytest.mark.slow


def test_refresh_picks_latest_checkpoint_and_chains_manifests(ray_cluster, model_cache, tmp_path):
    base = fast_config(str(tmp_path / "out"), model_cache)
    tiny = resolve_model_uri(base)
    root = tmp_path / "checkpoints"
    shutil.copytree(tiny, root / "checkpoint-100")
    cfg = base.model_copy(update={"name": "nightly",
                                  "model": base.model.model_copy(update={"checkpoint_root": str(root)})})

    first = run_scheduled_refresh(cfg, stamp="20261123")
    assert first.run_id.startswith("nightly-20261123-step100-")
    assert load_previous(cfg)[0] == first.manifest_uri

    # a double trigger of the same schedule returns the finished run
    again = run_scheduled_refresh(cfg, stamp="20261123")
    assert again.run_id == first.run_id and again.manifest_uri == first.manifest_uri

    # a new checkpoint + next schedule: new run, previous manifest is the KL reference
    shutil.copytree(tiny, root / "checkpoint-200")
    second = run_scheduled_refresh(cfg, stamp="20261130")
    assert second.run_id.startswith("nightly-20261130-step200-")
    manifest = parse_manifest(storage.read_bytes(second.manifest_uri))
    assert manifest.provenance.previous_manifest_uri == first.manifest_uri
    assert manifest.provenance.model_path.endswith("checkpoint-200")
    assert manifest.provenance.checkpoint_step == 200
    assert load_previous(cfg)[0] == second.manifest_uri
