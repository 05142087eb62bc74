"""Run-time inputs (previous manifest, checkpoint) are resolved once and pinned in plan.json."""

from __future__ import annotations

import shutil

import pytest

from operators.io import storage
from operators.errors import ConfigError
from tests.workflows.helpers import fast_config
from workflows.stages.problem import latest_pointer_uri, load_previous
from workflows.run.pins import pin_run
from workflows.run.plan import build_plan, check_or_record_plan, read_recorded_plan

pytestmark = pytest.mark.timeout(60)


def _publish_pointer(cfg, run_id: str) -> str:
    uri = f"{cfg.output_uri}/manifests/{cfg.name}/{run_id}/manifest.json"
    storage.write_json_atomic(latest_pointer_uri(cfg), {"run_id": run_id, "manifest_uri": uri,
                                                        "started_at": "2026-01-01T00:00:00+00:00"})
    return uri


@pytest.mark.parametrize("run_id", [None, "explicit"])
def test_resumed_run_keeps_the_reference_pinned_at_start(tmp_path, run_id) -> None:
    extra = [f"run_id={run_id}"] if run_id else []
    cfg = fast_config(str(tmp_path / "out"), str(tmp_path / "cache"), *extra)
    first = _publish_pointer(cfg, "earlier")
    pinned_cfg, pins = pin_run(cfg)
    assert pins == {"checkpoint": None, "previous_manifest": first}
    plan = build_plan(pinned_cfg)
    assert check_or_record_plan(plan, cfg.storage, pins) is False
    recorded = read_recorded_plan(plan.root, cfg.storage)
    assert recorded["pins"] == pins and recorded["started_at"]

    _publish_pointer(cfg, "twin")  # a concurrent run publishes while this one runs
    again_cfg, again = pin_run(cfg)
    assert again == pins and again_cfg.resolved_run_id() == pinned_cfg.resolved_run_id()
    assert check_or_record_plan(build_plan(again_cfg), cfg.storage, again) is True


def test_no_previous_is_pinned_too(tmp_path) -> None:
    cfg = fast_config(str(tmp_path / "out"), str(tmp_path / "cache"), "run_id=first")
    pinned_cfg, pins = pin_run(cfg)
    assert pins["previous_manifest"] is None
    check_or_record_plan(build_plan(pinned_cfg), cfg.storage, pins)
    _publish_pointer(cfg, "other")
    assert pin_run(cfg)[1]["previous_manifest"] is None
    assert load_previous(cfg, None) == (None, None)  # pinned "none" never falls back to the pointer


def test_different_inputs_under_the_same_run_id_are_refused(tmp_path) -> None:
    cfg = fast_config(str(tmp_path / "out"), str(tmp_path / "cache"), "run_id=r")
    plan = build_plan(cfg)
    check_or_record_plan(plan, cfg.storage, {"checkpoint": None, "previous_manifest": None})
    with pytest.raises(ConfigError, match="was started with inputs"):
        check_or_record_plan(plan, cfg.storage, {"checkpoint": None, "previous_manifest": "s3://x/m.json"})


def test_checkpoint_is_pinned_into_the_run_id(tmp_path) -> None:
    root = tmp_path / "ckpts"
    for step in (100, 200):
        (root / f"checkpoint-{step}").mkdir(parents=True)
        (root / f"checkpoint-{step}" / "config.json").write_text("{}")
    cfg = fast_config(str(tmp_path / "out"), str(tmp_path / "cache"), f"model.checkpoint_root={root}")
    pinned, pins = pin_run(cfg)
    assert pins["checkpoint"].endswith("checkpoint-200") and pinned.model.path == pins["checkpoint"]
    shutil.copytree(root / "checkpoint-200", root / "checkpoint-300")
    newer, _ = pin_run(cfg)
    assert newer.resolved_run_id() != pinned.resolved_run_id()  # a new checkpoint is a new run


def test_average_checkpoints_pins_the_newest_n_for_run_and_refresh(tmp_path) -> None:
    from operators.errors import ConfigError, ModelError
    from workflows.refresh import refresh_config

    root = tmp_path / "ckpts"
    for step in (100, 200, 300):
        (root / f"checkpoint-{step}").mkdir(parents=True)
        (root / f"checkpoint-{step}" / "config.json").write_text("{}")
    cfg = fast_config(str(tmp_path / "out"), str(tmp_path / "cache"), f"model.checkpoint_root={root}",
                      "model.average_checkpoints=2")
    pinned, pins = pin_run(cfg)
    newest = [str(root / "checkpoint-200"), str(root / "checkpoint-300")]
    assert pinned.model.checkpoints == newest and pins["checkpoints"] == newest
    assert pinned.model.path == pins["checkpoint"] == newest[-1] and pinned.model.checkpoint_root is None
    # a scheduled refresh pins the same two (the root is not dropped before averaging)
    stamped = refresh_config(cfg, "20261202")
    assert stamped.model.checkpoints == newest and stamped.run_id.startswith("default-20261202-step300-")
    assert pin_run(stamped)[1]["checkpoints"] == newest
    # fewer checkpoints than asked for, or averaging without a root: loud errors, no silent single checkpoint
    three = cfg.model_copy(update={"model": cfg.model.model_copy(update={"average_checkpoints": 4})})
    with pytest.raises(ModelError, match=r"average_checkpoints=4 .* only 3 .*\[100, 200, 300\]"):
        pin_run(three)
    rootless = fast_config(str(tmp_path / "out"), str(tmp_path / "cache"), "model.average_checkpoints=2")
    with pytest.raises(ConfigError, match="needs model.checkpoint_root"):
        pin_run(rootless)
    # single-checkpoint runs keep their pins exactly as before
    assert set(pin_run(cfg.model_copy(update={"model": cfg.model.model_copy(
        update={"average_checkpoints": 1})}))[1]) == {"checkpoint", "previous_manifest"}


def test_checkpoint_list_must_agree_with_average(tmp_path) -> None:
    with pytest.raises(ConfigError, match="model.checkpoints lists 2 checkpoints but average_checkpoints=1"):
        fast_config(str(tmp_path / "out"), str(tmp_path / "c"), f"model.checkpoints=[{tmp_path}/a,{tmp_path}/b]")
    with pytest.raises(ConfigError, match="either model.checkpoint_root"):
        fast_config(str(tmp_path / "out"), str(tmp_path / "c"), f"model.checkpoints=[{tmp_path}/a,{tmp_path}/b]",
                    "model.average_checkpoints=2", f"model.checkpoint_root={tmp_path}")
    for name in ("a", "b"):  # checkpoint folders with a file (the run id keys on the checkpoint's files)
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    listed = fast_config(str(tmp_path / "out"), str(tmp_path / "c"), f"model.checkpoints=[{tmp_path}/a,{tmp_path}/b]",
                         "model.average_checkpoints=2")
    pinned, pins = pin_run(listed)
    assert pinned.model.path == f"{tmp_path}/b" and pins["checkpoints"] == [f"{tmp_path}/a", f"{tmp_path}/b"]
