"""Config loading: YAML + base inheritance + dotlist overrides, validated with clear errors."""

from __future__ import annotations

import pytest

from operators.errors import ConfigError
from workflows.config import load_config, resolve_config_path


def test_default_config_resolves_bundled_assets():
    cfg = load_config("default")
    assert cfg.name == "default"
    assert cfg.corpus.paths[0].endswith("assets/data/corpus")
    assert {t.name for t in cfg.targets} >= {"target_mixed"}
    assert cfg.featurize.projection.kind == "kronecker"
    assert cfg.resolved_run_id().startswith("default-")


def test_overrides_apply_and_change_the_run_id():
    base = load_config("default")
    cfg = load_config("default", ["mixture.beta=0.25", "featurize.projection.kind=dense",
                                  "featurize.projection.dim=256"])
    assert cfg.mixture.beta == 0.25
    assert cfg.featurize.projection.kind == "dense"
    assert cfg.featurize.projection.dim == 256
    assert cfg.config_hash() != base.config_hash()
    # cluster placement is not part of the semantic hash: same data, same run
    assert load_config("default", ["cluster.num_workers=1"]).resolved_run_id() == base.resolved_run_id()


def test_inherited_config_merges_base():
    cfg = load_config("full")
    assert cfg.influence.preconditioner == "kfac"
    assert cfg.mates.enabled
    assert cfg.corpus.paths == load_config("default").corpus.paths


def test_unknown_key_is_rejected_with_its_name():
    with pytest.raises(ConfigError, match=r"mixture\.betta"):
        load_config("default", ["mixture.betta=2"])


def test_bad_value_names_the_field():
    with pytest.raises(ConfigError, match=r"mixture\.beta"):
        load_config("default", ["mixture.beta=-1"])
    with pytest.raises(ConfigError, match=r"featurize\.projection\.kind"):
        load_config("default", ["featurize.projection.kind=sparse"])


def test_cross_field_check_kfac_needs_kronecker():
    with pytest.raises(ConfigError, match="kfac"):
        load_config("default", ["influence.preconditioner=kfac", "featurize.projection.kind=dense"])


def test_malformed_override_and_missing_file():
    with pytest.raises(ConfigError, match="key=value"):
        load_config("default", ["mixture.beta"])
    with pytest.raises(ConfigError, match="neither a file"):
        resolve_config_path("no-such-config")


def test_yaml_file_and_env_source(tmp_path, monkeypatch):
    path = tmp_path / "mine.yaml"
    path.write_text("defaults: [default]\nname: mine\nmixture: {beta: 3.0}\n")
    cfg = load_config(str(path))
    assert cfg.name == "mine" and cfg.mixture.beta == 3.0
    monkeypatch.setenv("CFG_YAML", path.read_text())
    assert load_config("env:CFG_YAML").config_hash() == cfg.config_hash()
    with pytest.raises(ConfigError, match="NOT_SET_VAR"):
        load_config("env:NOT_SET_VAR")


def test_duplicate_target_names_rejected(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("defaults: [default]\ntargets:\n  - {name: a, paths: [x]}\n  - {name: a, paths: [y]}\n")
    with pytest.raises(ConfigError, match="unique"):
        load_config(str(path))
