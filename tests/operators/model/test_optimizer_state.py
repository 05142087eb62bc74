"""optimizer.pt as training stacks write it: torch AdamW state_dicts (HF Trainer groups), mapped by name."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from operators.errors import ModelError
from operators.model.checkpoints import optimizer_from_state
from operators.model.loading import checkpoint_adam_state, checkpoint_optimizer, load_adam_moments, load_causal_lm
from operators.model.optimizer_state import OptimizerStateError, meta_model, read_optimizer_state
from operators.model.tiny_lm import TinyLMSpec, build_tiny_lm
from operators.model.tokenize import prepare_tokenizer, tokenize_texts
from operators.training.probing import ProbeSpec, train_on_mixture
from tests.fixtures.trainer_checkpoint import (
    linear_schedule,
    save_trainer_checkpoint,
    train_steps,
    trainer_optimizer,
)
from workflows.assets import default_corpus_dir, default_tokenizer_dir

pytestmark = pytest.mark.timeout(180)

SPEC = TinyLMSpec(hidden_size=32, intermediate_size=64, max_length=64, warmup_steps=0, batch_size=4)


def _texts() -> list[str]:
    path = sorted(Path(default_corpus_dir()).glob("*.parquet"))[0]
    return pq.read_table(path).column("text").to_pylist()[:64]


def _trained(arch: str = "llama", groups: int = 2, hidden: int = 32):
    tok = PreTrainedTokenizerFast.from_pretrained(default_tokenizer_dir())
    spec = SPEC.model_copy(update={"architecture": arch, "hidden_size": hidden})
    model = build_tiny_lm(spec, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    opt = trainer_optimizer(model, groups=groups)
    sched = linear_schedule(opt)
    history = train_steps(model, prepare_tokenizer(tok), _texts(), 3, opt, sched)
    return model, tok, opt, sched, history


def _write(directory: Path, arch: str = "llama", groups: int = 2, **kwargs):
    model, tok, opt, sched, history = _trained(arch, groups)
    save_trainer_checkpoint(directory, model, tok, opt, sched, 3, history, **kwargs)
    return model, opt, sched


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_trainer_two_group_state_maps_to_names(tmp_path, arch: str) -> None:
    path = tmp_path / "checkpoint-3"
    model, opt, sched = _write(path, arch)
    assert len(opt.param_groups) == 2 and len(opt.param_groups[1]["params"]) > 0
    loaded = load_causal_lm(str(path))
    assert loaded.step == 3
    got = read_optimizer_state(loaded.local_dir, loaded.model)
    assert got is not None and got.format == "torch" and got.step == 3
    by_param = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:  # every moment lands on the parameter the optimizer held it for
        for p in group["params"]:
            exp_avg, exp_avg_sq = got.moments[by_param[id(p)]]
            assert torch.equal(exp_avg, opt.state[p]["exp_avg"])
            assert torch.equal(exp_avg_sq, opt.state[p]["exp_avg_sq"])
    assert [g["weight_decay"] for g in got.groups] == [0.01, 0.0]
    assert got.lr_source == "scheduler.pt"
    assert [g["lr"] for g in got.groups] == pytest.approx(sched.get_last_lr())
    # the same mapping from the architecture alone (meta device: no weights loaded), as preflight does
    again = read_optimizer_state(loaded.local_dir, meta_model(loaded.local_dir))
    assert again.describe() == got.describe()
    # LESS Adam-aware featurization reads the same moments by name
    moments = load_adam_moments(loaded.local_dir, loaded.model)
    assert moments["betas"] == (0.9, 0.999) and moments["step"] == 3


def test_one_group_state_and_sharded_weights(tmp_path) -> None:
    path = tmp_path / "checkpoint-3"
    model, opt, _ = _write(path, groups=1, max_shard_size="60KB")
    assert (path / "model.safetensors.index.json").is_file()
    assert len(list(path.glob("model-*-of-*.safetensors"))) > 1
    loaded = load_causal_lm(str(path))
    for (name, p), (_, q) in zip(model.named_parameters(), loaded.model.named_parameters()):
        assert torch.equal(p, q), name
    got = read_optimizer_state(loaded.local_dir, loaded.model)
    assert len(got.groups) == 1 and got.notes == ["order: one group"]
    first = next(iter(model.parameters()))
    assert torch.equal(got.moments["model.embed_tokens.weight"][0], opt.state[first]["exp_avg"])


def test_probes_continue_the_trainer_state_with_its_hyperparameters(tmp_path) -> None:
    path = tmp_path / "checkpoint-3"
    _, _, sched = _write(path)
    loaded = load_causal_lm(str(path))
    state = checkpoint_adam_state(loaded)
    assert state["hyperparameters_from"] == "checkpoint optimizer.pt"
    tok = prepare_tokenizer(loaded.tokenizer)
    batch = tokenize_texts(tok, _texts()[:8], 32)
    pools = {"a": (batch.input_ids, batch.attention_mask)}
    probe = ProbeSpec(lr=1e-2, weight_decay=0.5)
    cont = train_on_mixture(loaded.model, pools, {"a": 1.0}, 1, 4, probe, seed=0, optimizer_state=state)
    assert [g["lr"] for g in cont.param_groups] == pytest.approx(sched.get_last_lr())
    assert [g["weight_decay"] for g in cont.param_groups] == [0.01, 0.0]
    assert all(float(s["step"]) == 4 for s in cont.state.values())  # 3 trainer steps + 1 probe step
    config = train_on_mixture(load_causal_lm(str(path)).model, pools, {"a": 1.0}, 1, 4,
                              probe.model_copy(update={"hyperparameters": "config"}), seed=0, optimizer_state=state)
    assert [g["lr"] for g in config.param_groups] == [1e-2, 1e-2]
    assert [g["weight_decay"] for g in config.param_groups] == [0.5, 0.5]
    # rebuilt optimizer keeps the two groups and saves again
    assert len(optimizer_from_state(loaded.model, state).param_groups) == 2


def test_unmappable_state_warns_or_fails_per_setting(tmp_path, caplog) -> None:
    path = tmp_path / "checkpoint-3"
    _write(path)
    other = tmp_path / "other"
    _write(other, arch="gpt_neox")  # a different architecture's optimizer.pt
    (path / "optimizer.pt").write_bytes((other / "optimizer.pt").read_bytes())
    loaded = load_causal_lm(str(path))
    with pytest.raises(OptimizerStateError, match="optimizer.pt"):
        read_optimizer_state(loaded.local_dir, loaded.model)
    with caplog.at_level(logging.WARNING):
        assert checkpoint_adam_state(loaded, "auto") is None
    assert "fresh AdamW" in caplog.text and "optimizer.pt" in caplog.text
    with pytest.raises(ModelError, match="cannot map|lists"):
        checkpoint_optimizer(loaded, "require")
    assert checkpoint_optimizer(loaded, "ignore") is None
    (path / "optimizer.pt").unlink()
    with pytest.raises(ModelError, match="require but .* has no optimizer.pt"):
        checkpoint_optimizer(loaded, "require")
    (path / "optimizer.pt").write_bytes(b"not a torch file")
    with pytest.raises(OptimizerStateError, match="could not read"):
        read_optimizer_state(loaded.local_dir, loaded.model)


def test_same_count_wrong_shapes_is_refused(tmp_path) -> None:
    path = tmp_path / "checkpoint-3"
    _write(path)
    model, tok, opt, sched, history = _trained(hidden=48)  # same parameter count, other shapes
    torch.save(opt.state_dict(), path / "optimizer.pt")
    loaded = load_causal_lm(str(path))
    with pytest.raises(OptimizerStateError, match="matching shapes"):
        read_optimizer_state(loaded.local_dir, loaded.model)


def test_finished_schedule_falls_back_to_initial_lr(tmp_path) -> None:
    path = tmp_path / "checkpoint-3"
    model, tok, opt, _, history = _trained()
    sched = linear_schedule(opt, total=3, warmup=0)  # decays to 0 after 3 steps
    for _ in range(3):
        sched.step()
    save_trainer_checkpoint(path, model, tok, opt, sched, 3, history)
    got = read_optimizer_state(path, meta_model(path))
    assert [g["lr"] for g in got.groups] == pytest.approx([5e-4, 5e-4])
    assert any("schedule ended" in n for n in got.notes)
    (path / "scheduler.pt").unlink()  # no scheduler: the last logged learning rate
    got = read_optimizer_state(path, meta_model(path))
    assert got.lr_source == "trainer_state.json" and got.groups[0]["lr"] == pytest.approx(history[-1]["learning_rate"])
