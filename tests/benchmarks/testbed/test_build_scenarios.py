"""Shipped scenario data of the mixture testbed: checksums, sizes, pool and target composition."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from benchmarks.testbed import build_scenarios as bs
from workflows import assets
from workflows.assets import build_corpus as bc


def _rows(path: str | Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


@pytest.fixture(scope="module")
def corpus() -> dict[str, list[dict]]:
    return {p.name: _rows(p) for p in sorted(Path(assets.default_corpus_dir()).glob("*.parquet"))}


def _scenario_rows(sub: str) -> dict[str, list[dict]]:
    return {p.stem: _rows(p) for p in sorted((bs.DEFAULT_OUT / sub).glob("*.parquet"))}


def test_scenario_data_checksums_and_size() -> None:
    root = bs.DEFAULT_OUT
    listed = json.loads((root / "CHECKSUMS.json").read_text())["files"]
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert on_disk - set(listed) == {"CHECKSUMS.json"} and set(listed) <= on_disk
    for rel, digest in listed.items():
        assert assets.sha256_file(root / rel) == digest, rel
    assert sum((root / rel).stat().st_size for rel in listed) < 1_500_000
    sources = (root / "SOURCES.md").read_text()
    assert "GPL" in sources and "LGPL" in sources and "/usr/share/locale" in sources


def test_scenario_pool_and_targets(corpus) -> None:
    pool = _scenario_rows("corpus")
    by_domain: dict[str, list[dict]] = {}
    for rows in pool.values():
        for r in rows:
            by_domain.setdefault(r["domain"], []).append(r)
    assert {d: len(v) for d, v in by_domain.items()} == bs.POOL
    assert min(bs.POOL.values()) <= 80 < max(bs.POOL.values())  # one small domain
    targets = _scenario_rows("targets")
    assert set(targets) == {*bs.OOP_TARGETS, bs.MIXED_TARGET, *bs.DERIVED_TARGETS}
    for name, (lang, n) in bs.OOP_TARGETS.items():
        assert len(targets[name]) == n >= 150 and {r["domain"] for r in targets[name]} == {lang}
        assert lang not in bs.POOL  # outside the pool
    mixed = [r["domain"] for r in targets[bs.MIXED_TARGET]]
    assert {d: mixed.count(d) for d in set(mixed)} == bs.MIXED_HALVES
    default_rows = [r for rows in corpus.values() for r in rows]
    own = {n: v for n, v in targets.items() if n not in bs.DERIVED_TARGETS}  # derived ones reuse these rows
    rows = [r for v in pool.values() for r in v] + [r for v in own.values() for r in v]
    ids = [r["id"] for r in rows] + [r["id"] for r in default_rows]
    assert len(ids) == len(set(ids))
    known = {r["id"]: r for v in own.values() for r in v}
    for name in bs.DERIVED_TARGETS:  # derived targets hold exactly rows of the shipped targets
        assert targets[name] and all(known[r["id"]] == r for r in targets[name])
    assert all(bc.MIN_CHARS <= len(r["text"]) <= bc.HARD_MAX for r in rows)
    pool_keys = {bc._dedup_key(r["text"]) for r in default_rows} | {
        bc._dedup_key(r["text"]) for v in pool.values() for r in v}
    for name, trows in targets.items():
        assert all(bc._dedup_key(r["text"]) not in pool_keys for r in trows), name
