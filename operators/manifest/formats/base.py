"""The ``FORMATS`` registry: each manifest format's name, the file it is written to, and its renderer.

A renderer is pure: ``render(manifest, prefixes) -> bytes`` (``prefixes``: Megatron data prefixes by
domain, from ``mixture.data_prefixes``; formats that do not need them ignore them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from operators.manifest.schema import DomainEntry, Manifest
from operators.registry import Registry

Prefixes = Mapping[str, str] | None
Render = Callable[[Manifest, Prefixes], bytes]


@dataclass(frozen=True)
class ManifestFormat:
    name: str
    filename: str
    render: Render


FORMATS: Registry[ManifestFormat] = Registry("manifest format", key=lambda f: f.name)


def manifest_format(name: str, filename: str) -> Callable[[Render], Render]:
    """Decorator: register ``render`` as format ``name``, written to ``filename``."""

    def register(render: Render) -> Render:
        FORMATS.register(ManifestFormat(name, filename, render))
        return render

    return register


def render_all(manifest: Manifest, prefixes: dict[str, str] | None = None) -> dict[str, bytes]:
    """Every registered format, keyed by the file name the workflow writes it under (registration order)."""
    return {fmt.filename: fmt.render(manifest, prefixes) for fmt in FORMATS}


def yaml_text(data: Any) -> str:
    """PyYAML safe_dump with sorted keys, block style, unicode, width 120."""
    return yaml.safe_dump(data, sort_keys=True, default_flow_style=False, allow_unicode=True, width=120)


def positive_domains(manifest: Manifest) -> list[DomainEntry]:
    """Domains with weight > 0 (zero-weight datasets break Megatron blends and HF all_exhausted)."""
    return [d for d in manifest.domains if d.weight > 0]
