"""Megatron-LM ``--data-path`` blend (``megatron_blend.txt``)."""

from __future__ import annotations

from operators.errors import ConfigError
from operators.manifest.formats.base import Prefixes, manifest_format, positive_domains
from operators.manifest.schema import Manifest


def megatron_blend(manifest: Manifest, prefixes: Prefixes = None) -> str:
    """Megatron-LM `--data-path` blend "w1 prefix1 w2 prefix2 ..." (zero-weight domains omitted).

    A domain's prefix is prefixes[name], else its data_prefix, else its name; weights are written with repr
    (shortest round-trip form).
    """
    prefixes = prefixes or {}
    unknown = sorted(set(prefixes) - {d.name for d in manifest.domains})
    if unknown:
        raise ConfigError(f"mixture.data_prefixes names unknown domains {unknown}")
    parts = []
    for d in positive_domains(manifest):
        prefix = prefixes.get(d.name) or d.data_prefix or d.name
        if not prefix or any(c.isspace() for c in prefix):
            raise ConfigError(
                f"Megatron data prefix for domain {d.name!r} must be non-empty without whitespace: {prefix!r}"
            )
        parts.append(f"{d.weight!r} {prefix}")
    return " ".join(parts)


@manifest_format("megatron_blend", "megatron_blend.txt")
def _file(manifest: Manifest, prefixes: Prefixes) -> bytes:
    return (megatron_blend(manifest, prefixes) + "\n").encode()
