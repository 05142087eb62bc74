"""The `latest` pointer only moves forward (by run start time), with compare-and-swap, locally and on S3."""

from __future__ import annotations

import threading

import pytest

from operators.io import storage
from workflows.stages.publish import move_latest, pointer_order

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["local", "s3"])
def where(request: pytest.FixtureRequest, tmp_path):
    if request.param == "local":
        return storage.StorageSpec(), str(tmp_path / "out")
    return request.getfixturevalue("s3_storage")


def _pointer(run_id: str, started_at: str) -> dict:
    return {"run_id": run_id, "manifest_uri": f"m/{run_id}/manifest.json", "started_at": started_at}


def test_slow_older_run_cannot_replace_a_newer_manifest(where) -> None:
    spec, root = where
    uri = storage.join(root, "manifests", "default", "latest.json")
    older = _pointer("old-run", "2026-11-29T10:00:00+00:00")
    newer = _pointer("new-run", "2026-11-29T10:00:02+00:00")
    assert move_latest(uri, newer, spec) is True  # the newer run finishes first
    assert move_latest(uri, older, spec) is False  # the slow older one finishes last: pointer stays
    current = storage.read_json(uri, spec)
    assert current["run_id"] == "new-run" and current["sequence"] == 1
    later = _pointer("next-run", "2026-11-30T10:00:00+00:00")
    assert move_latest(uri, later, spec) is True
    assert storage.read_json(uri, spec)["sequence"] == 2
    assert move_latest(uri, later, spec) is False  # republishing the same run is a no-op


def test_concurrent_publishers_end_at_the_newest(where) -> None:
    spec, root = where
    uri = storage.join(root, "latest.json")
    pointers = [_pointer(f"run-{i}", f"2026-11-29T10:00:0{i}+00:00") for i in range(6)]
    barrier = threading.Barrier(len(pointers))

    def publish(p: dict) -> None:
        barrier.wait()
        move_latest(uri, p, spec)

    threads = [threading.Thread(target=publish, args=(p,)) for p in reversed(pointers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = storage.read_json(uri, spec)
    assert final["run_id"] == "run-5"
    assert 1 <= final["sequence"] <= len(pointers)


def test_order_is_start_time_then_run_id() -> None:
    a = _pointer("a", "2026-01-01T00:00:00+00:00")
    b = _pointer("b", "2026-01-01T00:00:00+00:00")
    assert pointer_order(a) < pointer_order(b) < pointer_order(_pointer("a", "2026-01-02T00:00:00+00:00"))
    assert pointer_order({"run_id": "legacy", "manifest_uri": "x"}) < pointer_order(a)


def test_published_weight_ci_belongs_to_the_published_mixture() -> None:
    import numpy as np

    from workflows.stages.publish import published_weight_ci

    boot = {"extra_low": np.array([0.4, 0.2]), "extra_high": np.array([0.6, 0.4])}
    ref = np.array([0.5, 0.5])
    assert published_weight_ci(boot, "tikmix_d", "tikmix_d", ref) == [(0.4, 0.6), (0.2, 0.4)]
    half = published_weight_ci(boot, "line:0.5", "tikmix_d", ref)
    assert np.allclose(half, [(0.45, 0.55), (0.35, 0.45)])  # the blend of the primary's CI ends
    assert published_weight_ci(boot, "baseline:dsir", "tikmix_d", ref) == [None, None]  # never bootstrapped
    assert published_weight_ci({}, "tikmix_d", "tikmix_d", ref) == [None, None]


def test_a_published_surrogate_proposal_gets_its_resampled_interval_and_the_report_says_so() -> None:
    import numpy as np

    from workflows.stages.publish import published_weight_ci, weight_ci_method

    ref = np.array([0.5, 0.5])
    ci = {"replicates": 30, "of": 32, "confidence": 0.9,
          "proposals": {"explore:surrogate1": {"low": {"a": 0.3, "b": 0.5}, "high": {"a": 0.5, "b": 0.7}}}}
    assert published_weight_ci({}, "explore:surrogate1", "tikmix_d", ref, ci["proposals"], ["a", "b"]) == [
        (0.3, 0.5), (0.5, 0.7)]
    assert published_weight_ci({}, "explore:surrogate0", "tikmix_d", ref, ci["proposals"], ["a", "b"]) == [
        None, None]
    validation = {"surrogate": {"weight_ci": ci}}
    assert "30 of 32 refits" in weight_ci_method("explore:surrogate1", "tikmix_d", validation, True)
    assert "did not propose" in weight_ci_method("explore:surrogate0", "tikmix_d", validation, False)
    assert "fixed design" in weight_ci_method("explore:heavy:a", "tikmix_d", validation, False)
    assert "bootstrap of the primary solver" in weight_ci_method("tikmix_d", "tikmix_d", validation, True)
