"""The manifest itself as canonical JSON (``manifest.json``)."""

from __future__ import annotations

import json

from operators.manifest.formats.base import Prefixes, manifest_format
from operators.manifest.schema import Manifest


def render_json(manifest: Manifest) -> str:
    """Canonical JSON (sorted keys, 2-space indent, trailing newline)."""
    return json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True, allow_nan=False) + "\n"


@manifest_format("json", "manifest.json")
def _file(manifest: Manifest, prefixes: Prefixes) -> bytes:
    return render_json(manifest).encode()
