"""Target splits by id hash: disjoint, stable, shard-independent."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pydantic import ValidationError

from operators.io.splits import TargetSplitSpec, split_labels, split_rows


def test_parts_are_disjoint_cover_everything_and_match_fractions() -> None:
    ids = [f"doc-{i}" for i in range(4000)]
    table = pa.table({"id": ids, "text": ["x"] * len(ids)})
    spec = TargetSplitSpec(influence=0.5, validation=0.25)
    parts = {p: set(split_rows(table, spec, p).column("id").to_pylist()) for p in ("influence", "validation", "test")}
    assert set().union(*parts.values()) == set(ids)
    assert sum(len(v) for v in parts.values()) == len(ids)
    assert abs(len(parts["influence"]) / len(ids) - 0.5) < 0.03
    assert abs(len(parts["validation"]) / len(ids) - 0.25) < 0.03
    assert split_rows(table, spec, "all").num_rows == len(ids)


def test_split_depends_only_on_id_and_seed() -> None:
    spec = TargetSplitSpec()
    whole = split_labels([f"x{i}" for i in range(100)], spec)
    halves = list(split_labels([f"x{i}" for i in range(50)], spec)) + list(
        split_labels([f"x{i}" for i in range(50, 100)], spec))
    assert list(whole) == halves
    assert list(split_labels([f"x{i}" for i in range(100)], TargetSplitSpec(seed=8))) != list(whole)


def test_fractions_over_one_are_rejected() -> None:
    with pytest.raises(ValidationError, match="exceeds 1"):
        TargetSplitSpec(influence=0.8, validation=0.3)


def test_validation_halves_are_disjoint_and_make_up_the_validation_part() -> None:
    ids = [f"doc-{i}" for i in range(4000)]
    table = pa.table({"id": ids, "text": ["x"] * len(ids)})
    spec = TargetSplitSpec(influence=0.5, validation=0.25)
    select = set(split_rows(table, spec, "validation_select").column("id").to_pylist())
    confirm = set(split_rows(table, spec, "validation_confirm").column("id").to_pylist())
    assert not select & confirm
    assert select | confirm == set(split_rows(table, spec, "validation").column("id").to_pylist())
    assert abs(len(select) - len(confirm)) < 0.1 * len(select | confirm)
