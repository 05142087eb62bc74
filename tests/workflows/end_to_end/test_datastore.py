"""The feature datastore through `influmix run` / `influmix verify`: what a rerun featurizes again.

One output root is shared by the tests of this module (in order): an analysis change reuses every
feature, a new shard or a changed shard is featurized alone, and a truncated or altered feature part
of a finished or an unfinished run is repaired with one log line naming it and the same weights.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.features import datastore
from tests.workflows.helpers import fast_overrides
from workflows.assets import default_corpus_dir
from workflows.cli import main
from workflows.config import load_config
from workflows.run.plan import build_plan, plan_completions

pytestmark = pytest.mark.slow


def _cli(*argv: str) -> tuple[int, str, str]:
    """``influmix <argv>`` in this process (on the shared Ray cluster): (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _run(overrides: list[str], *extra: str) -> tuple[dict, str]:
    code, out, err = _cli("run", "default", *overrides, *extra)
    assert code == 0, err[-3000:]
    return json.loads(out[out.index("{"):]), err


def _featurized(root: str) -> dict:
    with open(os.path.join(root, "stages", "featurize.json")) as fh:
        return json.load(fh)["datastore"]


def _repair_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "featurizing shard" in line and "again" in line]


@pytest.fixture(scope="module")
def store(ray_cluster, model_cache, tmp_path_factory):
    """A corpus copy (so tests can change it), the overrides of a fast run, and its first run."""
    base = tmp_path_factory.mktemp("datastore")
    corpus = base / "corpus"
    shutil.copytree(default_corpus_dir(), corpus)
    overrides = fast_overrides(str(base / "out"), model_cache, "mixture.validation.enabled=false",
                               f"corpus.paths=[{corpus}]")
    first, err = _run(overrides)
    plan = build_plan(load_config("default", overrides))
    assert first["run_id"] == plan.run_id
    assert _featurized(plan.root)["featurized"] == sorted(t.shard_id for t in plan.tasks)
    return {"base": base, "corpus": corpus, "out": str(base / "out"), "overrides": overrides, "first": first}


def test_analysis_change_featurizes_nothing(store):
    second, err = _run(store["overrides"], "mixture.beta=2.0", "influence.bootstrap=20")
    assert second["run_id"] != store["first"]["run_id"]  # a new analysis run ...
    plan = build_plan(load_config("default", store["overrides"] + ["mixture.beta=2.0", "influence.bootstrap=20"]))
    record = _featurized(plan.root)
    assert record["featurized"] == [] and record["reused"] == len(plan.tasks)  # ... on the same features
    assert f"{len(plan.tasks)} reused from the datastore" in err and "0 to featurize" in err
    assert len(os.listdir(os.path.join(store["out"], "datastore"))) == 1  # one featurizer key
    with open(os.path.join(plan.root, "report.json")) as fh:
        reuse = json.load(fh)["aggregation"]  # the analysis reads cached statistics, not the features
    corpus = len(plan.corpus_tasks())
    assert reuse["pass1_reused"] == reuse["pass1_shards"] == len(plan.tasks)
    assert reuse["score_shards"] == reuse["scores_from_score_shards"] == corpus  # another bootstrap, same scores


def test_new_target_set_featurizes_only_its_shards(store):
    sets = [("target_mixed", 2.0), ("val_code", 1.0), ("val_docs", 1.0), ("extra", 0.5)]
    extra = ["targets=[" + ", ".join(
        f"{{name: {name}, paths: ['${{asset:targets/{'val_docs' if name == 'extra' else name}.parquet}}'], "
        f"weight: {weight}}}" for name, weight in sets) + "]"]
    _, err = _run(store["overrides"], *extra)
    plan = build_plan(load_config("default", store["overrides"] + extra))
    assert _featurized(plan.root)["featurized"] == [t.shard_id for t in plan.target_tasks("extra")]


def test_truncated_part_of_finished_run_is_repaired(store):
    cfg = load_config("default", store["overrides"])
    plan = build_plan(cfg)
    victim = plan.corpus_tasks()[2]
    record = plan_completions(plan, cfg.storage)[victim.shard_id]
    part = record.parts[0]
    with open(part, "r+b") as fh:
        fh.truncate(record.part_bytes[0] // 2)

    code, out, _ = _cli("verify", store["out"])  # the whole output root: every datastore under it
    assert code == 1 and f"BAD {part}: " in out and "1 bad" in out

    again, err = _run(store["overrides"])
    assert again["weights"] == store["first"]["weights"]
    lines = _repair_lines(err)
    assert len(lines) == 1 and part in lines[0] and victim.shard_id in lines[0]
    assert "already finished" in err
    assert os.path.getsize(part) == record.part_bytes[0]
    code, out, _ = _cli("verify", plan.root)
    assert code == 0 and "0 bad" in out


def test_damaged_parts_of_unfinished_run_are_repaired(store):
    # the same analysis twice under two run ids (reference=uniform: the second must not measure itself
    # against the first one's manifest)
    same = ["mixture.beta=3.0", "mixture.reference=uniform"]
    undisturbed, _ = _run(store["overrides"], "run_id=undisturbed", *same)
    repaired = [*store["overrides"], "run_id=repaired", *same]
    _run(repaired, "--until", "featurize")  # unfinished: its features are the undisturbed run's
    cfg = load_config("default", repaired)
    plan = build_plan(cfg)
    done = plan_completions(plan, cfg.storage)
    truncated = done[plan.corpus_tasks()[0].shard_id].parts[0]
    with open(truncated, "r+b") as fh:  # a shorter part: found by its size when the features are reused
        fh.truncate(100)
    flipped = done[plan.target_tasks()[0].shard_id].parts[0]
    data = bytearray(open(flipped, "rb").read())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: found by its checksum when aggregated
    with open(flipped, "wb") as fh:
        fh.write(bytes(data))

    code, out, _ = _cli("verify", plan.root, "--sizes-only")
    assert code == 1 and f"BAD {truncated}" in out and flipped not in out
    result, err = _run(repaired)
    assert result["weights"] == pytest.approx(undisturbed["weights"], abs=1e-12)
    lines = _repair_lines(err)
    assert len(lines) == 1 and truncated in lines[0], lines
    record = _featurized(plan.root)  # the featurize stage redid the short part (found by its size) ...
    assert record["featurized"] == [plan.corpus_tasks()[0].shard_id]
    assert "Traceback" not in err
    # ... while the aggregation took the target shard's statistics from the analysis cache (computed from
    # its verified bytes by the undisturbed run), so the flipped part was never read: `verify` finds it
    code, out, _ = _cli("verify", plan.root)
    assert code == 1 and f"BAD {flipped}" in out and "sha256" in out
    code, out, _ = _cli("verify", plan.root, "--repair")
    assert code == 1 and "dropped the completion records of 1 shard(s)" in out
    after = [*store["overrides"], "run_id=after-repair", *same]  # the next run featurizes that shard again
    again, err = _run(after)
    assert again["weights"] == pytest.approx(undisturbed["weights"], abs=1e-12)
    assert _featurized(build_plan(load_config("default", after)).root)["featurized"] == [plan.target_tasks()[0].shard_id]
    assert _cli("verify", plan.root)[0] == 0


def _rewrite(path, ids_prefix: str = "", drop: int = 0) -> None:
    table = pq.read_table(path)
    if ids_prefix:
        table = table.set_column(0, "id", pa.array([ids_prefix + i for i in table.column("id").to_pylist()]))
    pq.write_table(table.slice(0, table.num_rows - drop), path)


def test_corpus_changes_featurize_only_the_changed_shards(store):
    corpus = store["corpus"]
    shutil.copy(corpus / "code-0000.parquet", corpus / "code-0099.parquet")
    _rewrite(corpus / "code-0099.parquet", ids_prefix="new-")
    cfg = load_config("default", store["overrides"])
    plan = build_plan(cfg)
    added = next(t.shard_id for t in plan.corpus_tasks() if "code-0099" in t.uri)
    grown, _ = _run(store["overrides"])
    assert grown["run_id"] != store["first"]["run_id"]  # other data, other analysis run
    assert _featurized(plan.root)["featurized"] == [added]

    _rewrite(corpus / "docs-0001.parquet", drop=5)  # same file, other bytes
    plan = build_plan(load_config("default", store["overrides"]))
    changed = next(t.shard_id for t in plan.corpus_tasks() if "docs-0001" in t.uri)
    _run(store["overrides"])
    assert _featurized(plan.root)["featurized"] == [changed]


def test_fixed_corrupt_shard_resumes(store):
    """A shard that cannot be read fails the run; once fixed, the rerun featurizes that shard alone."""
    corpus = store["corpus"]
    good = (corpus / "legal-0001.parquet").read_bytes()
    (corpus / "legal-0001.parquet").write_bytes(good[: len(good) // 3])
    overrides = [*store["overrides"], "run_id=fixme", "cluster.shard_attempts=1"]
    code, _, err = _cli("run", "default", *overrides)
    assert code == 2 and "legal-0001" in err
    (corpus / "legal-0001.parquet").write_bytes(good)
    plan = build_plan(load_config("default", overrides))
    _run(overrides)
    fixed = next(t.shard_id for t in plan.corpus_tasks() if "legal-0001" in t.uri)
    assert _featurized(plan.root)["featurized"] == [fixed]
