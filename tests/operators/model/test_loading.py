"""Checkpoint loading: local and s3:// (moto), fingerprints, Adam moments, errors, latest-step lookup."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from operators.io import storage as st
from operators.errors import ConfigError, ModelError
from operators.model.checkpoints import find_latest_checkpoint
from operators.model.loading import (
    checkpoint_fingerprint,
    load_adam_moments,
    load_causal_lm,
    load_tokenizer,
)
from operators.model.tiny_lm import TinyLMSpec, build_tiny_lm, save_checkpoint, warmup
from workflows.assets import default_corpus_dir, default_tokenizer_dir

pytestmark = pytest.mark.timeout(120)

SPEC = TinyLMSpec(hidden_size=32, intermediate_size=64, max_length=64, warmup_steps=3, batch_size=4)
PROBE = ["import os\nprint(os.getcwd())", "Permission is hereby granted, free of charge"]


def _save(directory: Path, arch: str = "llama", steps: int = 3) -> torch.nn.Module:
    tok = PreTrainedTokenizerFast.from_pretrained(default_tokenizer_dir())
    spec = SPEC.model_copy(update={"architecture": arch, "warmup_steps": steps})
    model = build_tiny_lm(spec, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    texts = pq.read_table(sorted(Path(default_corpus_dir()).glob("*.parquet"))[0]).column("text").to_pylist()
    opt = warmup(model, tok, texts, spec) if steps else None
    save_checkpoint(directory, model, tok, opt, {"spec": spec.model_dump()})
    return model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint-3"
    return path, _save(path)


def _logits(model: torch.nn.Module, tok) -> torch.Tensor:
    batch = tok(PROBE, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_save_load_roundtrip_gives_identical_logits(tmp_path, arch: str) -> None:
    model = _save(tmp_path / "m", arch)
    loaded = load_causal_lm(str(tmp_path / "m"))
    assert not loaded.model.training and loaded.step == 3
    assert loaded.tokenizer.pad_token == "<|pad|>" and loaded.meta["spec"]["architecture"] == arch
    assert loaded.config["model_type"] == arch and loaded.local_dir == str((tmp_path / "m").resolve())
    model.eval()
    assert torch.equal(_logits(model, loaded.tokenizer), _logits(loaded.model, loaded.tokenizer))
    half = load_causal_lm(f"file://{tmp_path / 'm'}", dtype="bfloat16")
    assert next(half.model.parameters()).dtype == torch.bfloat16


def test_fingerprint_tracks_config_and_weights(tmp_path, ckpt) -> None:
    path, _ = ckpt
    fp = load_causal_lm(str(path)).fingerprint
    assert fp == checkpoint_fingerprint(path) and len(fp) == 64
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    (copy / "influmix_meta.json").write_text("{}")  # metadata is not part of the fingerprint
    assert checkpoint_fingerprint(copy) == fp
    _save(tmp_path / "other", steps=4)
    assert checkpoint_fingerprint(tmp_path / "other") != fp


def test_adam_moments_roundtrip(tmp_path, ckpt) -> None:
    path, model = ckpt
    moments = load_adam_moments(path)
    assert moments is not None and moments["step"] == 3 and moments["betas"] == (0.9, 0.999)
    for name, param in model.named_parameters():
        assert moments[name]["exp_avg"].shape == param.shape
    assert load_adam_moments(tmp_path) is None
    (tmp_path / "optimizer.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="optimizer.pt"):
        load_adam_moments(tmp_path)


def test_step_falls_back_to_directory_name(tmp_path, ckpt) -> None:
    path, _ = ckpt
    target = tmp_path / "step_77"
    shutil.copytree(path, target)
    (target / "influmix_meta.json").unlink()
    loaded = load_causal_lm(str(target))
    assert loaded.step == 77 and loaded.meta == {}


def test_errors_name_the_path(tmp_path, ckpt) -> None:
    path, _ = ckpt
    missing = tmp_path / "nope"
    with pytest.raises(ModelError, match=str(missing)):
        load_causal_lm(str(missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="config.json") as info:
        load_causal_lm(str(empty))
    assert str(empty) in str(info.value)

    seq2seq = tmp_path / "t5"
    shutil.copytree(path, seq2seq)
    cfg = json.loads((seq2seq / "config.json").read_text())
    (seq2seq / "config.json").write_text(json.dumps({**cfg, "model_type": "t5"}))
    with pytest.raises(ModelError, match="not a causal LM"):
        load_causal_lm(str(seq2seq))

    no_weights = tmp_path / "no_weights"
    shutil.copytree(path, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="no weights file"):
        load_causal_lm(str(no_weights))

    corrupt = tmp_path / "corrupt"
    shutil.copytree(path, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match=str(corrupt)):
        load_causal_lm(str(corrupt))

    with pytest.raises(ConfigError, match="dtype"):
        load_causal_lm(str(path), dtype="float8")


def test_find_latest_checkpoint_local(tmp_path, ckpt) -> None:
    path, _ = ckpt
    root = tmp_path / "run"
    for name in ("checkpoint-5", "checkpoint-40", "step_12"):
        (root / name).mkdir(parents=True)
        (root / name / "config.json").write_text("{}")
    (root / "checkpoint-100").mkdir()  # no config.json: an unfinished save
    (root / "checkpoint-999.tmp").mkdir()
    (root / "checkpoint-999.tmp" / "config.json").write_text("{}")
    (root / "checkpoint-500").write_text("a file, not a directory")
    assert find_latest_checkpoint(str(root)) == str(root / "checkpoint-40")
    with pytest.raises(ModelError, match="checkpoint root .*missing_root does not exist"):
        find_latest_checkpoint(str(tmp_path / "missing_root"))
    (tmp_path / "bare").mkdir()
    with pytest.raises(ModelError, match="no checkpoint under") as info:
        find_latest_checkpoint(str(tmp_path / "bare"))
    assert str(tmp_path / "bare") in str(info.value)


def test_s3_checkpoint_is_staged_once_and_loads(tmp_path, ckpt, s3_storage) -> None:
    path, model = ckpt
    spec, bucket = s3_storage
    for step in (3, 20):
        for f in sorted(path.iterdir()):
            st.write_bytes_atomic(st.join(bucket, "run", f"checkpoint-{step}", f.name), f.read_bytes(), spec)
    st.write_bytes_atomic(st.join(bucket, "run", "checkpoint-50", "README"), b"incomplete", spec)
    latest = find_latest_checkpoint(st.join(bucket, "run"), spec)
    assert latest == st.join(bucket, "run", "checkpoint-20")

    cache = tmp_path / "cache"
    loaded = load_causal_lm(latest, storage=spec, cache_dir=str(cache))
    assert loaded.local_dir.startswith(str(cache)) and loaded.uri == latest
    assert loaded.fingerprint == checkpoint_fingerprint(path)
    assert load_adam_moments(loaded.local_dir)["step"] == 3
    model.eval()
    assert torch.equal(_logits(model, loaded.tokenizer), _logits(loaded.model, loaded.tokenizer))

    weights = Path(loaded.local_dir) / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again = load_causal_lm(latest, storage=spec, cache_dir=str(cache))
    assert again.local_dir == loaded.local_dir and weights.stat().st_mtime_ns == stamp  # cache hit
    assert [p.name for p in (cache / "models").iterdir() if p.name.startswith(".")] == []  # no temp dirs
    assert load_tokenizer(latest, storage=spec, cache_dir=str(cache)).pad_token == "<|pad|>"

    # a changed object (new ETag/size) gets a fresh cache entry
    meta_uri = st.join(bucket, "run", "checkpoint-20", "influmix_meta.json")
    st.write_bytes_atomic(meta_uri, b'{"step": 21}', spec)
    changed = load_causal_lm(latest, storage=spec, cache_dir=str(cache))
    assert changed.local_dir != loaded.local_dir and changed.step == 21
    assert len(os.listdir(cache / "models")) == 2

    with pytest.raises(ModelError, match="checkpoint-404"):
        load_causal_lm(st.join(bucket, "run", "checkpoint-404"), storage=spec, cache_dir=str(cache))
    with pytest.raises(ModelError, match="config.json"):
        load_causal_lm(st.join(bucket, "run", "checkpoint-50"), storage=spec, cache_dir=str(cache))
