"""Held-out splits of the target sets, by a stable hash of the example id.

Every target set is split three ways so that no number is measured on the data that produced it:

* ``influence``  — featurized; its mean gradient is what group influence scores domains against;
* ``validation`` — the pre-publish probe trainings measure candidate mixtures on it. It has two
  disjoint halves: ``validation_select`` (the first round of probes and TiKMiX-M choose on it) and
  ``validation_confirm`` (the chosen mixture is confirmed on it), so a choice is never confirmed on the
  examples that made it;
* ``test``       — never touched by a refresh; the testbed and benchmarks score published mixtures on it.

The split of an example depends only on ``(seed, id)``, so it is the same however the target set is
sharded, and a row can never move between parts.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from operators.io.corpus import example_hash

SplitName = Literal["influence", "validation", "validation_select", "validation_confirm", "test", "all"]


class TargetSplitSpec(BaseModel):
    """Fractions of each target set used for influence and validation; the rest is the test split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    influence: float = Field(default=0.5, gt=0.0, le=1.0,
                             description="share of each target set whose gradient defines the target")
    validation: float = Field(default=0.25, ge=0.0, le=1.0,
                              description="share measured by the pre-publish validation probes")
    seed: int = Field(default=7, description="hash seed of the split (independent of sampling.seed)")

    @model_validator(mode="after")
    def _fractions(self) -> TargetSplitSpec:
        if self.influence + self.validation > 1.0 + 1e-12:
            raise ValueError(f"influence ({self.influence}) + validation ({self.validation}) exceeds 1")
        return self

    def edges(self) -> tuple[float, float]:
        return self.influence, self.influence + self.validation


def split_labels(ids: pa.Array | pa.ChunkedArray | list[str], spec: TargetSplitSpec) -> np.ndarray:
    """Part name of every id (object array of 'influence' / 'validation' / 'test')."""
    u = example_hash(ids, spec.seed).astype(np.float64) / 2.0**64
    first, second = spec.edges()
    return np.where(u < first, "influence", np.where(u < second, "validation", "test")).astype(object)


def validation_halves(ids: pa.Array | pa.ChunkedArray | list[str], spec: TargetSplitSpec) -> np.ndarray:
    """Part name of every id, with the validation part divided at its middle into ``validation_select``
    and ``validation_confirm`` (the same hash, so the halves are disjoint and stable)."""
    u = example_hash(ids, spec.seed).astype(np.float64) / 2.0**64
    first, second = spec.edges()
    middle = (first + second) / 2
    return np.where(u < first, "influence", np.where(u < middle, "validation_select", np.where(
        u < second, "validation_confirm", "test"))).astype(object)


def split_rows(table: pa.Table, spec: TargetSplitSpec, part: SplitName) -> pa.Table:
    """Rows of ``table`` (with an ``id`` column) that fall in ``part`` (``all``: every row;
    ``validation``: both of its halves)."""
    if part == "all" or table.num_rows == 0:
        return table
    if part.startswith("validation_"):
        return table.filter(pa.array(validation_halves(table.column("id"), spec) == part))
    return table.filter(pa.array(split_labels(table.column("id"), spec) == part))
