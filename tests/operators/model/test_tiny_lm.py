"""Tiny causal LM: construction from configs, deterministic warm-up, checkpoint layout."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from operators.errors import ConfigError, ModelError
from operators.model.tiny_lm import META_FILE, TinyLMSpec, build_tiny_lm, lm_loss, save_checkpoint, warmup
from workflows.assets import default_corpus_dir, default_targets, default_tokenizer_dir

pytestmark = pytest.mark.timeout(120)

FAST = TinyLMSpec(hidden_size=32, intermediate_size=64, num_heads=4, max_length=64, warmup_steps=20,
                  batch_size=8, lr=5e-3)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast.from_pretrained(default_tokenizer_dir())


@pytest.fixture(scope="module")
def texts() -> tuple[list[str], list[str]]:
    """(train texts from two corpus shards of every domain, held-out validation texts)."""
    from pathlib import Path

    shards = sorted(Path(default_corpus_dir()).glob("*-000[01].parquet"))
    train = [t for p in shards for t in pq.read_table(p).column("text").to_pylist()]
    val = [t for name, p in default_targets().items() if name.startswith("val_")
           for t in pq.read_table(p).column("text").to_pylist()[:8]]
    return train, val


def _ids(tok: PreTrainedTokenizerFast) -> dict[str, int]:
    return {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id}


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_build_both_architectures_with_linear_layers(arch: str, tokenizer) -> None:
    spec = FAST.model_copy(update={"architecture": arch})
    model = build_tiny_lm(spec, **_ids(tokenizer))
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    # per layer: q,k,v,o (llama) or qkv,dense (neox) + 2-3 MLP projections, plus the LM head
    assert len(linears) >= spec.num_layers * 4 + 1
    assert model.config.tie_word_embeddings is False
    assert model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    assert model.config.vocab_size == len(tokenizer) and model.config.num_hidden_layers == spec.num_layers
    assert model.config.pad_token_id == tokenizer.pad_token_id
    again = build_tiny_lm(spec, **_ids(tokenizer))
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), again.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)  # seeded initialisation
    other = build_tiny_lm(spec.model_copy(update={"seed": 1}), **_ids(tokenizer))
    assert not torch.equal(model.get_output_embeddings().weight, other.get_output_embeddings().weight)
    batch = tokenizer(["def f(x):\n    return x"], return_tensors="pt")
    logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], len(tokenizer)) and torch.isfinite(logits).all()


def test_bad_spec_is_rejected(tokenizer) -> None:
    with pytest.raises(ConfigError, match="num_heads"):
        build_tiny_lm(FAST.model_copy(update={"num_heads": 5}), **_ids(tokenizer))
    with pytest.raises(ValueError):
        TinyLMSpec(architecture="gpt2")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TinyLMSpec(unknown=1)  # type: ignore[call-arg]


def test_warmup_lowers_heldout_loss_and_is_deterministic(tokenizer, texts) -> None:
    train, val = texts
    model = build_tiny_lm(FAST, **_ids(tokenizer))
    before = lm_loss(model, tokenizer, val, FAST.max_length)
    assert abs(before - torch.log(torch.tensor(float(len(tokenizer)))).item()) < 0.5  # ~uniform at init
    optimizer = warmup(model, tokenizer, train, FAST)
    after = lm_loss(model, tokenizer, val, FAST.max_length)
    assert after < before - 0.3, (before, after)
    assert isinstance(optimizer, torch.optim.AdamW)
    steps = {int(s["step"]) for s in optimizer.state.values()}
    assert steps == {FAST.warmup_steps}
    assert not model.training

    twin = build_tiny_lm(FAST, **_ids(tokenizer))
    warmup(twin, tokenizer, train, FAST)
    for p1, p2 in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p1, p2)


def test_warmup_needs_text(tokenizer) -> None:
    model = build_tiny_lm(FAST, **_ids(tokenizer))
    with pytest.raises(ModelError, match="empty"):
        warmup(model, tokenizer, [], FAST)
    with pytest.raises(ModelError, match="fewer than one block"):
        warmup(model, tokenizer, ["hi"], FAST)


def test_save_checkpoint_layout_and_optimizer_keyed_by_name(tmp_path, tokenizer, texts) -> None:
    spec = FAST.model_copy(update={"warmup_steps": 3})
    model = build_tiny_lm(spec, **_ids(tokenizer))
    optimizer = warmup(model, tokenizer, texts[0], spec)
    meta = {"spec": spec.model_dump(), "loss_after": 1.5}
    save_checkpoint(tmp_path / "ckpt", model, tokenizer, optimizer, meta)
    names = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "optimizer.pt", META_FILE} <= names

    state = torch.load(tmp_path / "ckpt" / "optimizer.pt", weights_only=True)
    params = dict(model.named_parameters())
    moment_keys = {k for k, v in state.items() if isinstance(v, dict)}
    assert moment_keys == set(params)  # every parameter, by name (not index)
    for name, moments in ((k, state[k]) for k in moment_keys):
        ref = optimizer.state[params[name]]
        assert torch.equal(moments["exp_avg"], ref["exp_avg"])
        assert torch.equal(moments["exp_avg_sq"], ref["exp_avg_sq"])
        assert (moments["exp_avg_sq"] >= 0).all()
    assert state["betas"] == (0.9, 0.999) and state["eps"] == 1e-8 and state["step"] == 3

    meta = json.loads((tmp_path / "ckpt" / "influmix_meta.json").read_text())
    assert meta["step"] == 3 and meta["loss_after"] == 1.5 and meta["spec"]["hidden_size"] == spec.hidden_size
    assert meta["created"]["torch"] == torch.__version__

    save_checkpoint(tmp_path / "plain", model, tokenizer, None, {})
    assert not (tmp_path / "plain" / "optimizer.pt").exists()
    assert json.loads((tmp_path / "plain" / "influmix_meta.json").read_text())["step"] == 0
