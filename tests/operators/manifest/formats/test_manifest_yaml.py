"""Tests for operators.manifest.formats.manifest_yaml: the same content as the JSON, as YAML."""

from __future__ import annotations

import yaml

from operators.manifest.formats import FORMATS
from operators.manifest.formats.manifest_json import render_json
from operators.manifest.formats.manifest_yaml import render_yaml
from operators.manifest.schema import Manifest, parse_manifest
from tests.operators.manifest.helpers import manifest_data


def test_yaml_round_trips_to_the_same_json() -> None:
    m = Manifest.model_validate(manifest_data())
    text = render_yaml(m)
    assert parse_manifest(text) == m
    assert render_json(parse_manifest(text)) == render_json(m)
    assert yaml.safe_load(text)["schema_version"] == "1.0"  # a string, not a float
    assert text.startswith("budget: {}\ndomains:\n")  # sorted keys, block style
    assert FORMATS.get("yaml").render(m, None) == text.encode()
