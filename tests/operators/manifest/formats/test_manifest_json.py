"""Tests for operators.manifest.formats.manifest_json: canonical JSON that parses back exactly."""

from __future__ import annotations

import json

from operators.manifest.formats import FORMATS
from operators.manifest.formats.manifest_json import render_json
from operators.manifest.schema import Manifest, parse_manifest
from tests.operators.manifest.helpers import manifest_data


def test_canonical_json_round_trips() -> None:
    m = Manifest.model_validate(manifest_data())
    text = render_json(m)
    assert parse_manifest(text) == m and parse_manifest(text.encode()) == m
    assert text.endswith("}\n") and text.startswith('{\n  "budget": {},\n')  # sorted keys, 2-space indent
    assert json.loads(text)["provenance"]["config_hash"] == "1e5"  # stays a string
    assert FORMATS.get("json").render(m, None) == text.encode()
