"""Preflight through the public CLI: each bad input fails in seconds, before Ray or any model runs, with
one line naming the file and field, and nothing is recorded under the run root."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from operators.errors import ModelError
from tests.workflows.helpers import fast_config
from workflows.assets import default_corpus_dir, ensure_default_checkpoint
from workflows.cli import main
from workflows.stages.preflight import run_preflight

pytestmark = pytest.mark.timeout(300)
DOMAINS = ("code", "docs", "legal")


@pytest.fixture
def corpus(tmp_path) -> Path:
    """Three domains of the bundled corpus, one shard each."""
    out = tmp_path / "corpus"
    out.mkdir()
    for d in DOMAINS:
        shutil.copy(Path(default_corpus_dir()) / f"{d}-0000.parquet", out / f"{d}-0000.parquet")
    return out


def _run(tmp_path: Path, cache: str, corpus: Path, *extra: str) -> tuple[int, list[str]]:
    args = ["run", "default", f"output_uri={tmp_path}/out", f"model.cache_dir={cache}", f"corpus.paths=[{corpus}]",
            *extra]
    return main(args), []


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("influmix: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """Preflight failures must come before Ray starts: starting it fails the test."""
    import cluster.runtime

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started although preflight should have failed")

    monkeypatch.setattr(cluster.runtime, "init_ray", refuse)


def _nothing_recorded(tmp_path: Path) -> None:
    assert not (tmp_path / "out" / "runs").exists()


def _write(path: Path, **columns) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def test_target_without_text_column(tmp_path, model_cache, corpus, capsys) -> None:
    bad = _write(tmp_path / "target.parquet", id=["a", "b"], body=["x y z", "u v w"])
    code, _ = _run(tmp_path, model_cache, corpus, f"targets=[{{name: t, paths: [{bad}]}}]")
    assert code == 2
    line = _error_line(capsys)
    assert str(bad) in line and "'text'" in line
    _nothing_recorded(tmp_path)


def test_empty_domain_value(tmp_path, model_cache, corpus, capsys) -> None:
    _write(corpus / "extra-0000.parquet", id=["e1", "e2"], domain=["code", ""], text=["print(1)", "x = 2"])
    assert _run(tmp_path, model_cache, corpus)[0] == 2
    line = _error_line(capsys)
    assert "extra-0000.parquet" in line and "'domain'" in line
    _nothing_recorded(tmp_path)


def test_listed_domain_without_rows(tmp_path, model_cache, corpus, capsys) -> None:
    assert _run(tmp_path, model_cache, corpus, "corpus.domains=[code,docs,changelog]")[0] == 2
    line = _error_line(capsys)
    assert "corpus.domains" in line and "'changelog'" in line
    _nothing_recorded(tmp_path)


def test_domain_whose_texts_are_all_empty(tmp_path, model_cache, corpus, capsys) -> None:
    _write(corpus / "blank-0000.parquet", id=[f"b{i}" for i in range(5)], domain=["blank"] * 5, text=[""] * 5)
    assert _run(tmp_path, model_cache, corpus)[0] == 2
    line = _error_line(capsys)
    assert "'blank'" in line and "'text'" in line
    _nothing_recorded(tmp_path)


def test_tokenizer_larger_than_the_embedding(tmp_path, model_cache, corpus, capsys) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(ensure_default_checkpoint(model_cache), ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["vocab_size"] = 300
    (ckpt / "config.json").write_text(json.dumps(config))
    assert _run(tmp_path, model_cache, corpus, f"model.path={ckpt}")[0] == 2
    line = _error_line(capsys)
    assert "vocab_size is 300" in line and str(ckpt) in line
    _nothing_recorded(tmp_path)


def test_output_not_writable(tmp_path, model_cache, corpus, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory is needed")
    assert main(["run", "default", f"output_uri={blocker}/out", f"model.cache_dir={model_cache}",
                 f"corpus.paths=[{corpus}]"]) == 2
    line = _error_line(capsys)
    assert str(blocker) in line and "not a directory" in line


def test_optimizer_state_setting(tmp_path, model_cache, corpus, capsys) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(ensure_default_checkpoint(model_cache), ckpt)
    torch.save({"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}},
                "param_groups": [{"params": [0], "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8,
                                  "weight_decay": 0.0}]}, ckpt / "optimizer.pt")
    assert _run(tmp_path, model_cache, corpus, f"model.path={ckpt}", "model.optimizer_state=require")[0] == 2
    line = _error_line(capsys)
    assert f"{ckpt}/optimizer.pt" in line and "model.optimizer_state=require" in line
    _nothing_recorded(tmp_path)
    # auto: the run goes on from a fresh AdamW, and says so
    cfg = fast_config(str(tmp_path / "out"), model_cache, f"model.path={ckpt}", f"corpus.paths=[{corpus}]")
    report = run_preflight(cfg, str(ckpt))
    opt = report["model"]["optimizer"]
    assert opt["moments"] == "fresh AdamW" and "optimizer.pt" in opt["reason"]
    ignore = cfg.model_copy(update={"model": cfg.model.model_copy(update={"optimizer_state": "ignore"})})
    assert run_preflight(ignore, str(ckpt))["model"]["optimizer"]["reason"] == "model.optimizer_state=ignore"
    adam = cfg.model_copy(update={"featurize": cfg.featurize.model_copy(update={"adam_aware": True})})
    with pytest.raises(ModelError, match="adam_aware"):
        run_preflight(adam, str(ckpt))


def test_default_inputs_pass_in_well_under_a_second(tmp_path, model_cache) -> None:
    cfg = fast_config(str(tmp_path / "out"), model_cache)
    report = run_preflight(cfg, ensure_default_checkpoint(model_cache))
    assert report["corpus"]["exact"] and set(report["corpus"]["usable_rows"]) >= set(DOMAINS)
    assert report["model"]["optimizer"]["moments"] == "checkpoint optimizer.pt"
    assert report["model"]["optimizer"]["hyperparameters"] == "config"  # influmix layout: default unchanged
    assert report["wall_s"] < 5
    assert list((tmp_path / "out").iterdir()) == []  # the write probe is gone
