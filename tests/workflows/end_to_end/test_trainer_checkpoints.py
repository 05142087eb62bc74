"""End to end through the CLI on a checkpoint root written the way the Hugging Face Trainer writes it:
`refresh` with `model.average_checkpoints=2` publishes, averages 2 checkpoints, and its probes continue
the checkpoint's AdamW state with the Trainer's own param groups and learning rate."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from operators.model.loading import load_causal_lm
from operators.model.tokenize import prepare_tokenizer
from tests.fixtures.trainer_checkpoint import (
    linear_schedule,
    save_trainer_checkpoint,
    train_steps,
    trainer_optimizer,
)
from tests.workflows.helpers import fast_overrides
from workflows.assets import default_corpus_dir, ensure_default_checkpoint
from workflows.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _trainer_root(root: Path, cache: str) -> list[Path]:
    """checkpoint-2 and checkpoint-4 (sharded weights): the default tiny LM trained on by a Trainer-style
    two-group AdamW with a linear schedule."""
    loaded = load_causal_lm(ensure_default_checkpoint(cache))
    model, tok = loaded.model, loaded.tokenizer
    texts = []
    for path in sorted(Path(default_corpus_dir()).glob("*-0000.parquet")):
        texts += pq.read_table(path).column("text").to_pylist()[:16]
    opt = trainer_optimizer(model, lr=3e-4)
    sched = linear_schedule(opt, total=50)
    history = train_steps(model, prepare_tokenizer(tok), texts, 2, opt, sched)
    first = save_trainer_checkpoint(root / "checkpoint-2", model, tok, opt, sched, 2, history, max_steps=50)
    history += train_steps(model, prepare_tokenizer(tok), texts, 2, opt, sched, offset=2)
    second = save_trainer_checkpoint(root / "checkpoint-4", model, tok, opt, sched, 4, history, max_steps=50,
                                     max_shard_size="200KB")
    assert len(list(second.glob("model-*-of-*.safetensors"))) > 1
    return [first, second]


def test_refresh_on_a_trainer_checkpoint_root_averages_and_continues_adamw(ray_cluster, model_cache, tmp_path,
                                                                           capsys) -> None:
    root = tmp_path / "trainer-out"
    first, second = _trainer_root(root, model_cache)
    out = tmp_path / "out"
    overrides = fast_overrides(str(out), model_cache, f"model.checkpoint_root={root}", "model.average_checkpoints=2",
                               "mixture.compare=[]", "mixture.baselines=[uniform]", "mixture.validation.steps=4",
                               "mixture.validation.line_points=[]", "mixture.validation.beta_path=[]")
    assert main(["refresh", "default", *overrides, "--stamp", "20261202"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["run_id"].startswith("default-20261202-step4-")
    report = json.loads((out / "runs" / result["run_id"] / "report.json").read_text())

    ckpts = report["checkpoints"]
    assert ckpts["average"] == 2 and [c["step"] for c in ckpts["checkpoints"]] == [2, 4]
    assert [c["uri"] for c in ckpts["checkpoints"]] == [str(first), str(second)]
    probe = report["validation"]["probe_optimizer"]
    assert probe["moments"] == "checkpoint optimizer.pt" and probe["format"] == "torch"
    assert probe["hyperparameters"] == "checkpoint optimizer.pt" and probe["lr_source"] == "scheduler.pt"
    assert [g["weight_decay"] for g in probe["groups"]] == [0.01, 0.0]
    assert report["preflight"]["model"]["optimizer"]["step"] == 4
    md = (out / "runs" / result["run_id"] / "report.md").read_text()
    assert "influence averaged over 2 checkpoints" in md and "probes continued: checkpoint optimizer.pt" in md
    manifest = json.loads(Path(result["manifest"]).read_text())
    assert manifest["provenance"]["checkpoint_step"] == 4
    assert sorted(d["name"] for d in manifest["domains"]) == sorted(result["weights"])

    # fewer checkpoints than asked for fails loudly, before any work
    assert main(["refresh", "default", *fast_overrides(str(tmp_path / "out3"), model_cache,
                                                        f"model.checkpoint_root={root}",
                                                        "model.average_checkpoints=3"),
                 "--stamp", "20261202"]) == 2
    err = capsys.readouterr().err
    assert "model.average_checkpoints=3" in err and "only 2" in err
