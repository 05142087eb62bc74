"""Tests for operators.manifest.formats.base: the FORMATS registry and render_all."""

from __future__ import annotations

import pytest

from operators.manifest.formats import FORMATS, base, render_all
from operators.manifest.schema import Manifest, parse_manifest
from operators.registry import Registry
from tests.operators.manifest.helpers import manifest_data

FILES = ["manifest.json", "manifest.yaml", "megatron_blend.txt", "hf_interleave.json", "domain_weights.yaml"]


def test_registry_lists_every_format_in_write_order() -> None:
    assert FORMATS.names() == ["domain_weights", "hf_interleave", "json", "megatron_blend", "yaml"]
    assert [f.filename for f in FORMATS] == FILES
    assert FORMATS.get("megatron_blend").filename == "megatron_blend.txt"


def test_render_all_writes_each_registered_file() -> None:
    m = Manifest.model_validate(manifest_data())
    files = render_all(m, {"code": "/data/code_doc"})
    assert list(files) == FILES  # manifest.json first: publish reads its URI back
    assert all(isinstance(v, bytes) for v in files.values())
    assert parse_manifest(files["manifest.json"]) == parse_manifest(files["manifest.yaml"]) == m
    assert files["megatron_blend.txt"] == b"0.5 /data/web_text_document 0.25 /data/code_doc 0.25 books\n"
    assert render_all(m, {"code": "/data/code_doc"}) == files  # deterministic bytes


def test_a_new_format_is_one_decorated_renderer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "FORMATS", Registry("manifest format", key=lambda f: f.name))

    @base.manifest_format("names", "domains.txt")
    def _names(manifest: Manifest, prefixes: base.Prefixes) -> bytes:
        return ",".join(d.name for d in manifest.domains).encode()

    m = Manifest.model_validate(manifest_data())
    assert base.render_all(m) == {"domains.txt": b"web,code,books"}
    with pytest.raises(ValueError, match="registered twice"):
        base.manifest_format("names", "other.txt")(lambda manifest, prefixes: b"")


def test_positive_domains_and_yaml_text() -> None:
    m = Manifest.model_validate(manifest_data((0.75, 0.0, 0.25)))
    assert [d.name for d in base.positive_domains(m)] == ["web", "books"]
    assert base.yaml_text({"b": 1, "a": ["é"]}) == "a:\n- é\nb: 1\n"
