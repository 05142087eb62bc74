"""The manifest itself as YAML (``manifest.yaml``)."""

from __future__ import annotations

from operators.manifest.formats.base import Prefixes, manifest_format, yaml_text
from operators.manifest.schema import Manifest


def render_yaml(manifest: Manifest) -> str:
    """The same content as render_json, as YAML (PyYAML safe_dump, sorted keys)."""
    return yaml_text(manifest.model_dump(mode="json"))


@manifest_format("yaml", "manifest.yaml")
def _file(manifest: Manifest, prefixes: Prefixes) -> bytes:
    return render_yaml(manifest).encode()
