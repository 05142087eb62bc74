"""Manifest file formats, written by ``render_all`` in registration order; see base.py.

Adding a format: one file here whose renderer is decorated with ``@manifest_format(name, filename)``,
plus one import line below.
"""

from operators.manifest.formats.base import FORMATS, ManifestFormat, manifest_format, render_all

# Built-in formats: one import each registers it (this order is the order files are written).
from operators.manifest.formats import manifest_json  # noqa: E402,F401
from operators.manifest.formats import manifest_yaml  # noqa: E402,F401
from operators.manifest.formats import megatron  # noqa: E402,F401
from operators.manifest.formats import huggingface  # noqa: E402,F401
from operators.manifest.formats import domain_weights  # noqa: E402,F401

__all__ = ["FORMATS", "ManifestFormat", "manifest_format", "render_all"]
