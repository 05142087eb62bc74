"""Property-based tests: the config loader and the CLI on hostile YAML, bytes and overrides.

Every input either loads or fails with a ConfigError naming the file or field at fault (exit code 2 from
the CLI, one line, no traceback); any other exception fails the test.
"""

from __future__ import annotations

import os

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as hs
from omegaconf import OmegaConf

from operators.errors import ConfigError
from workflows.cli import main
from workflows.config import RunConfig, load_config

pytestmark = pytest.mark.timeout(120)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
KEYS = ["name", "run_id", "output_uri", "corpus", "corpus.paths", "targets", "mixture.beta", "sampling.rate",
        "cluster.num_workers", "defaults", "model.path", "storage.endpoint_url", "featurize.projection.kind"]
scalars = hs.none() | hs.booleans() | hs.integers() | hs.floats() | hs.text(max_size=30)
values = hs.recursive(scalars, lambda inner: hs.lists(inner, max_size=3)
                      | hs.dictionaries(hs.sampled_from(KEYS) | hs.text(max_size=8), inner, max_size=3),
                      max_leaves=8)


def _load(path) -> None:
    """A RunConfig, or a ConfigError naming the file (or, for `defaults`, the base config at fault)."""
    try:
        cfg = load_config(str(path))
    except ConfigError as exc:
        msg = str(exc)
        assert str(path) in msg or msg.startswith(("defaults", "config ")), msg
    else:
        assert isinstance(cfg, RunConfig)


def _names_field(msg: str, key: str, value: str) -> bool:
    """The error names the override's key: a malformed key, an override that cannot be read or merged, an
    interpolation error at the key, or a validation error located at the key, at an item inside it, or
    at the unknown section above it."""
    if msg.startswith(("overrides must look like key=value", f"override {key}: cannot apply ")):
        return f"{key}={value}" in msg or repr(f"{key}={value}") in msg
    parts = key.split(".")
    above = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return f"full_key: {key}\n" in msg or f"\n  {key}." in msg or any(f"\n  {loc}: " in msg for loc in above)


def _holds(got, want) -> bool:
    """The loaded field holds the override's YAML value (paths made absolute, numbers coerced)."""
    if isinstance(want, dict):
        return all(_holds(getattr(got, k, None), v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(_holds, got, want))
    if isinstance(want, str) and isinstance(got, str):
        return got in (want, os.path.abspath(os.path.expanduser(want)))
    return got == want and (want is None) == (got is None)


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


TYPED = hs.sampled_from(["0.25", "2", "-1", "true", "null", "~", "dense", "[]", "[a, b]", "{}", "{paths: [x]}",
                          "s3://b/x", "a b", "${name}", "${nope}", "'quoted'"])


@FUZZ
@given(key=hs.sampled_from(KEYS) | hs.text(max_size=10).filter(lambda k: not set("=[]\\") & set(k)),
       value=TYPED | hs.text(max_size=20))  # `=`, `[`, `]` and `\\` are OmegaConf's key syntax, not names
@example(key="mixture.beta", value="0.25")
@example(key="sampling.rate", value="2")
@example(key="corpus.paths", value="[a, b]")
@example(key="mixture.beta", value="\x0b")
@example(key="corpus.nope", value="1")
@example(key="", value="0.25")
def test_random_overrides(key, value) -> None:
    """One override either loads into a config whose field holds the value, or fails with a ConfigError
    naming the field."""
    try:
        cfg = load_config("default", [f"{key}={value}"])
    except ConfigError as exc:
        assert _names_field(str(exc), key, value), str(exc)
        return
    node, want = cfg, OmegaConf.to_container(OmegaConf.from_dotlist([f"{key}={value}"]))
    for part in key.split("."):
        assert hasattr(node, part), f"{key}={value!r} loaded but the config has no field {key}"
        node, want = getattr(node, part), want[part]
    if "${" in value:  # an interpolation: the field holds its resolved value
        assert "${" not in str(node)
    else:
        assert _holds(node, want), (key, value, node)


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
