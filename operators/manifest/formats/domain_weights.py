"""RegMix-style domain weights YAML (``domain_weights.yaml``)."""

from __future__ import annotations

from operators.manifest.formats.base import Prefixes, manifest_format, yaml_text
from operators.manifest.schema import Manifest, weights_of


def domain_weights_yaml(manifest: Manifest) -> str:
    """RegMix-style YAML: `train: {domain: weight}`."""
    return yaml_text({"train": weights_of(manifest)})


@manifest_format("domain_weights", "domain_weights.yaml")
def _file(manifest: Manifest, prefixes: Prefixes) -> bytes:
    return domain_weights_yaml(manifest).encode()
