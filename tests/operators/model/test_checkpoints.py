"""Checkpoint layouts: step parsing, listing (local and s3://), the writer's round trip via the readers."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from operators.io import storage as st
from operators.model.checkpoints import (
    find_latest_checkpoint,
    last_checkpoints,
    list_checkpoints,
    optimizer_from_state,
    parse_step,
    save_step_checkpoint,
)
from operators.errors import ConfigError, ModelError
from operators.model.loading import checkpoint_adam_state, load_causal_lm
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
    with pytest.raises(ModelError, match="no checkpoint"):
        last_checkpoints(str(tmp_path / "empty"), 1)


LAYOUTS = {"checkpoint-40": 40, "global_step7": 7, "step_12": 12, "step-3": 3, "iter_0000500": 500}
NOT_STEPS = ["checkpoint-best", "step_1_backup", "checkpoint-999.tmp", ".checkpoint-5.tmp-ab12",
             "mycheckpoint-5", "checkpoint--5", "checkpoint-", "iter_", "step_1.5", "runs", "checkpoint-٣"]


@pytest.mark.parametrize(("name", "step"), sorted(LAYOUTS.items()))
def test_parse_step_reads_every_layout(name: str, step: int) -> None:
    forms = (name, f"{name}/", f"{name}//", f"/ckpts/{name}", f"s3://bucket/run/{name}/", f"file:///r/{name}")
    for form in forms:
        assert parse_step(form) == step, form


@pytest.mark.parametrize("name", NOT_STEPS)
def test_parse_step_refuses_other_names(name: str) -> None:
    assert parse_step(name) is None and parse_step(f"s3://bucket/{name}/") is None


def test_parse_step_reads_only_the_last_component() -> None:
    assert parse_step("s3://bucket/checkpoint-5/model") is None
    assert parse_step("/runs/step_9/checkpoint-10") == 10
    assert parse_step("") is None and parse_step("/") is None and parse_step("s3://bucket") is None


def test_listing_finds_all_layouts_locally(tmp_path: Path) -> None:
    for name in [*LAYOUTS, "checkpoint-best", "step_1_backup", "checkpoint-999.tmp"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    (tmp_path / "checkpoint-900").mkdir()  # no config.json: an unfinished save
    (tmp_path / "step_800").write_text("a file, not a directory")
    expected = sorted((step, str(tmp_path / name)) for name, step in LAYOUTS.items())
    assert list_checkpoints(str(tmp_path)) == expected
    assert find_latest_checkpoint(str(tmp_path)) == str(tmp_path / "iter_0000500")


def test_listing_finds_all_layouts_on_s3(s3_storage) -> None:
    spec, bucket = s3_storage
    root = st.join(bucket, "run")
    for name in [*LAYOUTS, "checkpoint-best"]:
        st.write_bytes_atomic(st.join(root, name, "config.json"), b"{}", spec)
    st.write_bytes_atomic(st.join(root, "checkpoint-900", "README"), b"incomplete", spec)
    expected = sorted((step, st.join(root, name)) for name, step in LAYOUTS.items())
    assert list_checkpoints(root, spec) == expected
    assert last_checkpoints(root, 2, spec) == [st.join(root, "checkpoint-40"), st.join(root, "iter_0000500")]
