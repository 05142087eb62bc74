"""``influmix verify``: check a run's (or a whole output root's) feature datastore on demand.

Every finished shard's parts are checked against its completion record: present, the recorded size,
the recorded sha256. A run root is checked through its plan(s) (``plan.json``, and ``ckpt-*/plan.json``
when influence is averaged over checkpoints); any other location is searched for completion records
(``_done/*.json``), so an output root checks every datastore under it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from operators.errors import InfluMixError
from operators.features import datastore
from operators.io import storage
from workflows.run.plan import PLAN_FILE, ShardTask, feature_root

log = logging.getLogger(__name__)


@dataclass
class VerifyReport:
    """What :func:`verify_location` found."""

    shards: int = 0
    parts: int = 0
    bad: list[datastore.FeaturePartCorrupt] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)  # planned shards without a completion record
    roots: dict[str, str] = field(default_factory=dict)  # shard id -> datastore folder of each bad shard

    @property
    def ok(self) -> bool:
        return not self.bad


def _plan_roots(location: str, spec: storage.StorageSpec | None) -> dict[str, str] | None:
    """``{shard_id: folder}`` from the run's plan files, or None when ``location`` is not a run root."""
    top = storage.join(location, PLAN_FILE)
    if not storage.exists(top, spec):
        return None
    plans = [top] + [u for u in storage.list_files(location, (".json",), spec)
                     if u.endswith("/" + PLAN_FILE) and u.rsplit("/", 2)[-2].startswith("ckpt-")]
    roots: dict[str, str] = {}
    for uri in plans:
        doc = storage.read_json(uri, spec)
        plan_root = uri.rsplit("/", 1)[0]
        for raw in doc.get("tasks", []):
            task = ShardTask.model_validate(raw)
            roots[f"{plan_root}|{task.shard_id}"] = feature_root(doc.get("store", ""), plan_root, task)
    return roots


def _record_roots(location: str, spec: storage.StorageSpec | None) -> dict[str, str]:
    """``{key: folder}`` of every completion record found under ``location``."""
    out: dict[str, str] = {}
    for uri in storage.list_files(location, (".json",), spec):
        head, _, name = uri.rpartition("/_done/")
        if head and "/" not in name:
            out[f"{head}|{name[:-len('.json')]}"] = head
    return out


def verify_location(location: str, spec: storage.StorageSpec | None = None, checksums: bool = True) -> VerifyReport:
    """Check every finished shard under a run root or output root (see the module docstring)."""
    if not storage.exists(location, spec):
        raise InfluMixError(f"influmix verify: {location} does not exist")
    roots = _plan_roots(location, spec)
    planned = roots is not None
    if roots is None:
        roots = _record_roots(location, spec)
    report = VerifyReport()
    by_folder: dict[str, dict[str, str]] = {}
    for key, folder in roots.items():
        by_folder.setdefault(folder, {})[key.rsplit("|", 1)[1]] = folder
    for folder, shards in sorted(by_folder.items()):
        records = datastore.read_completions(shards, spec)
        for sid in sorted(shards):
            record = records.get(sid)
            if record is None:
                if planned:
                    report.unfinished.append(sid)
                continue
            report.shards += 1
            report.parts += len(datastore.record_parts(record))
            for bad in datastore.verify_shard(folder, record, spec, checksums=checksums):
                report.bad.append(bad)
                report.roots[sid] = folder
    if report.shards == 0 and not report.unfinished:
        raise InfluMixError(f"influmix verify: no feature datastore under {location} (no plan.json, no "
                            "_done/*.json completion records)")
    return report


def invalidate_bad(report: VerifyReport, spec: storage.StorageSpec | None = None) -> list[str]:
    """Drop the completion records of the shards with bad parts (the next run featurizes them again)."""
    for sid, folder in sorted(report.roots.items()):
        datastore.invalidate(folder, sid, spec)
    return sorted(report.roots)
