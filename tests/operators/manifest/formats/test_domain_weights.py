"""Tests for operators.manifest.formats.domain_weights: RegMix-style `train: {domain: weight}` YAML."""

from __future__ import annotations

from operators.manifest.formats import FORMATS
from operators.manifest.formats.domain_weights import domain_weights_yaml
from operators.manifest.schema import Manifest
from tests.operators.manifest.helpers import manifest_data


def test_domain_weights_yaml_exact() -> None:
    m = Manifest.model_validate(manifest_data((0.5, 0.25, 0.25)))
    text = "train:\n  books: 0.25\n  code: 0.25\n  web: 0.5\n"
    assert domain_weights_yaml(m) == text
    assert FORMATS.get("domain_weights").render(m, None) == text.encode()
