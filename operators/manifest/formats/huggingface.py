"""Arguments for Hugging Face ``datasets.interleave_datasets`` (``hf_interleave.json``)."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from typing import Any

from operators.manifest.formats.base import Prefixes, manifest_format, positive_domains
from operators.manifest.schema import Manifest


def _exact_probabilities(weights: list[float]) -> list[float]:
    """Normalise to multiples of 2**-52 (largest-remainder rounding, exact rationals), so that every summation
    order of the result gives exactly 1.0 (all partial sums are representable)."""
    scale = 1 << 52
    total = sum(Fraction(w) for w in weights)
    raw = [Fraction(w) * scale / total for w in weights]
    units = [math.floor(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: units[i] - raw[i])[: scale - sum(units)]:
        units[i] += 1
    return [u / scale for u in units]


def hf_interleave(manifest: Manifest, seed: int | None = None) -> dict[str, Any]:
    """Arguments for `datasets.interleave_datasets` (zero-weight domains omitted; probabilities sum to 1.0).

    seed defaults to manifest.solver["seed"] when present, else 0.
    """
    entries = positive_domains(manifest)
    if seed is None:
        solver_seed = manifest.solver.get("seed", 0)
        seed = solver_seed if isinstance(solver_seed, int) else 0
    return {
        "datasets": [d.name for d in entries],
        "probabilities": _exact_probabilities([d.weight for d in entries]),
        "stopping_strategy": "all_exhausted",
        "seed": seed,
    }


@manifest_format("hf_interleave", "hf_interleave.json")
def _file(manifest: Manifest, prefixes: Prefixes) -> bytes:
    return (json.dumps(hf_interleave(manifest), indent=2, sort_keys=True) + "\n").encode()
