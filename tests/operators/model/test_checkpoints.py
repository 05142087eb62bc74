"""Checkpoint writer round trip: what save_step_checkpoint writes, the refresh's readers read back."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from operators.model.checkpoints import list_checkpoints, optimizer_from_state, save_step_checkpoint
from operators.errors import ConfigError, ModelError
from operators.model.loading import checkpoint_adam_state, find_latest_checkpoint, load_causal_lm
from operators.training.probing import ProbeSpec, train_on_mixture
from operators.model.tiny_lm import TinyLMSpec, build_tiny_lm, warmup
from operators.model.tokenize import prepare_tokenizer, tokenize_texts
from workflows.assets import default_corpus_dir, default_tokenizer_dir

pytestmark = pytest.mark.timeout(120)

SPEC = TinyLMSpec(hidden_size=32, intermediate_size=64, max_length=64, warmup_steps=2, batch_size=4)


@pytest.fixture(scope="module")
def trained():
    tok = PreTrainedTokenizerFast.from_pretrained(default_tokenizer_dir())
    model = build_tiny_lm(SPEC, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    texts = pq.read_table(sorted(Path(default_corpus_dir()).glob("*.parquet"))[0]).column("text").to_pylist()
    opt = warmup(model, tok, texts, SPEC)
    return model, tok, opt, texts


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_round_trip_latest_and_adam_state(tmp_path, trained) -> None:
    model, tok, opt, texts = trained
    root = tmp_path / "ckpts"
    first = save_step_checkpoint(root, 2, model, tok, opt)
    # continue training from the loaded state, save a later step
    loaded = load_causal_lm(first)
    state = checkpoint_adam_state(loaded)
    assert state is not None and all(float(v["step"]) == 2 for v in state["state"].values())
    t = prepare_tokenizer(loaded.tokenizer)
    batch = tokenize_texts(t, texts[:8], 32)
    pools = {"a": (batch.input_ids, batch.attention_mask)}
    opt2 = train_on_mixture(loaded.model, pools, {"a": 1.0}, 3, 4, ProbeSpec(), seed=0, optimizer_state=state)
    second = save_step_checkpoint(root, 5, loaded.model, loaded.tokenizer, opt2, {"note": "stage 1"})

    assert find_latest_checkpoint(str(root)) == second
    assert list_checkpoints(str(root)) == [(2, first), (5, second)]
    back = load_causal_lm(second)
    assert back.step == 5 and back.meta["note"] == "stage 1"
    assert _states_equal(back.model.state_dict(), loaded.model.state_dict())
    adam = checkpoint_adam_state(back)
    assert adam is not None
    live = opt2.state_dict()
    for i, entry in live["state"].items():  # same parameter order: model.parameters()
        assert torch.equal(adam["state"][i]["exp_avg"], entry["exp_avg"])
        assert torch.equal(adam["state"][i]["exp_avg_sq"], entry["exp_avg_sq"])
        assert float(adam["state"][i]["step"]) == 5
    # an optimizer rebuilt from the checkpoint's state can be saved again, unchanged
    again = save_step_checkpoint(root, 6, back.model, back.tokenizer, optimizer_from_state(back.model, adam))
    adam6 = checkpoint_adam_state(load_causal_lm(again))
    assert torch.equal(adam6["state"][0]["exp_avg"], adam["state"][0]["exp_avg"])


def test_writer_refuses_overwrite_and_remote(tmp_path, trained) -> None:
    model, tok, opt, _ = trained
    save_step_checkpoint(tmp_path, 1, model, tok, None)
    with pytest.raises(ModelError, match="already exists"):
        save_step_checkpoint(tmp_path, 1, model, tok, None)
    with pytest.raises(ConfigError, match="local"):
        save_step_checkpoint("s3://bucket/ckpts", 1, model, tok, None)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-1"]  # no temp dirs left behind
    (tmp_path / "empty").mkdir()
    assert list_checkpoints(str(tmp_path / "empty")) == []
