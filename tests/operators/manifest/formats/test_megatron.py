"""Tests for operators.manifest.formats.megatron: the exact `--data-path` blend string."""

from __future__ import annotations

import pytest

from operators.errors import ConfigError
from operators.manifest.formats import FORMATS
from operators.manifest.formats.megatron import megatron_blend
from operators.manifest.schema import Manifest
from tests.operators.manifest.helpers import manifest_data


def test_megatron_blend_exact_string() -> None:
    m = Manifest.model_validate(manifest_data((0.5, 0.25, 0.25)))
    assert megatron_blend(m) == "0.5 /data/web_text_document 0.25 code 0.25 books"
    expected = "0.5 /data/web_text_document 0.25 /data/code_doc 0.25 books"
    assert megatron_blend(m, {"code": "/data/code_doc"}) == expected
    assert FORMATS.get("megatron_blend").render(m, {"code": "/data/code_doc"}) == (expected + "\n").encode()
    zero = Manifest.model_validate(manifest_data((0.75, 0.0, 0.25)))
    assert megatron_blend(zero) == "0.75 /data/web_text_document 0.25 books"
    with pytest.raises(ConfigError, match="whitespace"):
        megatron_blend(m, {"code": "/data/my code"})
    with pytest.raises(ConfigError, match="unknown domains"):
        megatron_blend(m, {"cod": "/x"})
