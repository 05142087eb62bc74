"""Property-based tests: the config loader and the CLI on hostile YAML, bytes and overrides.

Every input either loads or fails with a ConfigError (exit code 2 from the CLI, one line, no traceback).
"""

from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from operators.errors import ConfigError
from workflows.cli import main
from workflows.config import load_config

pytestmark = pytest.mark.timeout(120)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
KEYS = ["name", "run_id", "output_uri", "corpus", "corpus.paths", "targets", "mixture.beta", "sampling.rate",
        "cluster.num_workers", "defaults", "model.path", "storage.endpoint_url", "featurize.projection.kind"]
scalars = hs.none() | hs.booleans() | hs.integers() | hs.floats() | hs.text(max_size=30)
values = hs.recursive(scalars, lambda inner: hs.lists(inner, max_size=3)
                      | hs.dictionaries(hs.sampled_from(KEYS) | hs.text(max_size=8), inner, max_size=3),
                      max_leaves=8)


def _load(path) -> None:
    try:
        load_config(str(path))
    except ConfigError as exc:
        assert str(path) in str(exc) or "config" in str(exc)


@FUZZ
@given(data=hs.binary(max_size=500))
def test_random_bytes(tmp_path, data) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(data)
    _load(path)


@FUZZ
@given(doc=hs.dictionaries(hs.sampled_from(KEYS), values, max_size=6))
def test_random_yaml_documents(tmp_path, doc) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    _load(path)


@FUZZ
@given(overrides=hs.lists(hs.tuples(hs.sampled_from(KEYS) | hs.text(max_size=10), hs.text(max_size=20)),
                          max_size=3))
def test_random_overrides(overrides) -> None:
    try:
        load_config("default", [f"{k}={v}" for k, v in overrides])
    except ConfigError:
        pass


@pytest.mark.parametrize("text", ["", "{", "- a\n- b\n", "a: [\n", "\xff\xfe", "defaults: [nope]\n",
                                  "defaults: [c]\n", "output_uri: ${oc.env:NOPE_NOT_SET}\n"])
def test_cli_reports_bad_configs_without_traceback(tmp_path, capsys, text) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(text.encode("utf-8", "surrogateescape") if text != "\xff\xfe" else b"\xff\xfe")
    assert main(["config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("influmix: error:") and "Traceback" not in err


@pytest.mark.parametrize("override", ["run_id=../../../x", "name=/abs/x", "run_id=a b", "name=.."])
def test_unsafe_names_in_overrides_are_refused(capsys, override) -> None:
    assert main(["config", "default", override]) == 2
    err = capsys.readouterr().err
    assert "is not a safe name" in err and override.split("=")[0] in err
