"""Tests for operators.manifest.schema: validation of the model and parsing JSON/YAML text."""

import json

import pytest
import yaml
from pydantic import ValidationError

from operators.errors import ConfigError
from operators.manifest.schema import Manifest, parse_manifest, weights_of
from tests.operators.manifest.helpers import manifest_data as _data


def test_parse_reads_json_and_yaml_exactly() -> None:
    m = Manifest.model_validate(_data())
    assert m.solver["lower"] == [0.0, 0.0, 0.0] and type(m.solver["seed"]) is int  # numpy made plain
    obj = m.model_dump(mode="json")
    for text in (json.dumps(obj), yaml.safe_dump(obj)):
        assert parse_manifest(text) == m
        assert parse_manifest(text.encode()) == m
    assert weights_of(m) == {"web": 0.5, "code": 0.25, "books": 0.25}


def test_weight_validation() -> None:
    with pytest.raises(ValidationError, match="sum to 1"):
        Manifest.model_validate(_data((0.5, 0.25, 0.2)))
    Manifest.model_validate(_data((0.5, 0.25, 0.25 + 5e-7)))  # within tolerance
    for weights in ((1.5, -0.25, -0.25), (float("nan"), 0.5, 0.5), (float("inf"), 0.0, 0.0)):
        with pytest.raises(ValidationError):
            Manifest.model_validate(_data(weights))
    with pytest.raises(ValidationError, match="unique"):
        Manifest.model_validate(_data(names=("web", "web", "books")))
    bad_ci = _data()
    bad_ci["domains"][0]["score_ci"] = (1.0, 0.0)
    with pytest.raises(ValidationError, match="score_ci"):
        Manifest.model_validate(bad_ci)
    bad_shape = _data()
    bad_shape["influence"]["gi"] = [[0.0, 0.0]]
    with pytest.raises(ValidationError, match="3x2"):
        Manifest.model_validate(bad_shape)
    nan_gi = _data()
    nan_gi["influence"]["gi"][0][0] = float("nan")
    with pytest.raises(ValidationError, match=r"influence\.gi\.0\.0"):
        Manifest.model_validate(nan_gi)
    bad_solver = _data()
    bad_solver["solver"]["fn"] = object()
    with pytest.raises(ValidationError, match=r"solver\n.*value at \.fn is a object"):
        Manifest.model_validate(bad_solver)


def test_parse_rejects_bad_versions_and_names_fields() -> None:
    obj = Manifest.model_validate(_data()).model_dump(mode="json")
    for version, match in (("2.0", "unsupported schema_version '2.0'"), (None, "schema_version is missing")):
        changed = {k: v for k, v in obj.items() if k != "schema_version"}
        if version:
            changed["schema_version"] = version
        with pytest.raises(ConfigError, match=match):
            parse_manifest(json.dumps(changed))
    obj["domains"][1]["n_examples"] = -3
    with pytest.raises(ConfigError, match=r"domains\.1\.n_examples"):
        parse_manifest(json.dumps(obj))
    obj["domains"][1]["n_examples"] = 3
    obj["domains"][1]["colour"] = "red"
    with pytest.raises(ConfigError, match=r"domains\.1\.colour"):
        parse_manifest(yaml.safe_dump(obj))
    with pytest.raises(ConfigError, match="mapping"):
        parse_manifest("- a\n- b\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        parse_manifest(b"\xff\xfe")
