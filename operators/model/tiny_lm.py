"""A tiny causal LM built from a transformers config, briefly warmed up on CPU, saved with Adam moments."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from operators.errors import ConfigError, ModelError
from operators.model.quiet import hf_quiet

OPTIMIZER_FILE = "optimizer.pt"
META_FILE = "influmix_meta.json"
SMALL_MODEL_PARAMS = 5_000_000


class TinyLMSpec(BaseModel):
    """Shape and warm-up recipe of the embedded default model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    architecture: Literal["llama", "gpt_neox"] = "llama"
    hidden_size: int = Field(64, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(128, ge=8)
    max_length: int = Field(128, ge=8)
    warmup_steps: int = Field(60, ge=0)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(3e-3, gt=0)
    seed: int = 0


def build_tiny_lm(
    spec: TinyLMSpec, vocab_size: int, pad_token_id: int, bos_token_id: int, eos_token_id: int
) -> PreTrainedModel:
    """A freshly initialised (seeded) Llama or GPT-NeoX causal LM made of ``nn.Linear`` layers."""
    if spec.hidden_size % spec.num_heads:
        raise ConfigError(f"hidden_size={spec.hidden_size} is not divisible by num_heads={spec.num_heads}")
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=spec.max_length,
        tie_word_embeddings=False,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )
    torch.manual_seed(spec.seed)
    if spec.architecture == "llama":
        model: PreTrainedModel = LlamaForCausalLM(LlamaConfig(num_key_value_heads=spec.num_heads, **common))
    else:
        model = GPTNeoXForCausalLM(GPTNeoXConfig(use_parallel_residual=True, **common))
    return model.float()


@contextmanager
def small_model_threads(model: torch.nn.Module) -> Iterator[None]:
    """Run small models single-threaded: intra-op threads only add overhead (and stall under load)."""
    before = torch.get_num_threads()
    small = sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS
    if small and before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small and before > 1:
            torch.set_num_threads(before)


def _pack(tokenizer: Any, texts: list[str], block: int, n_blocks: int, gen: torch.Generator) -> torch.Tensor:
    """Tokenize texts in seeded random order (+EOS), concatenate, cut into at most ``n_blocks`` rows.

    Only as many texts as are needed for ``n_blocks`` rows are tokenized; with fewer, every text is.
    """
    if not texts:
        raise ModelError("warm-up needs at least one text; got an empty list")
    eos = tokenizer.eos_token_id
    order = torch.randperm(len(texts), generator=gen).tolist()
    ids: list[int] = []
    for start in range(0, len(order), 64):
        batch = [texts[i] for i in order[start : start + 64]]
        for row in tokenizer(batch, add_special_tokens=True, verbose=False)["input_ids"]:
            ids.extend(row)
            if eos is not None:
                ids.append(eos)
        if len(ids) >= n_blocks * block:
            break
    n = min(n_blocks, len(ids) // block)
    if n == 0:
        raise ModelError(f"warm-up texts hold {len(ids)} tokens, fewer than one block of {block}")
    return torch.tensor(ids[: n * block], dtype=torch.long).view(n, block)


def warmup(model: PreTrainedModel, tokenizer: Any, texts: list[str], spec: TinyLMSpec) -> torch.optim.AdamW:
    """Train ``spec.warmup_steps`` AdamW steps on packed blocks of ``texts``; return the optimizer.

    Deterministic for a given seed: texts are drawn in seeded order and packed into distinct blocks; the
    learning rate warms up linearly over the first 10% of steps, then decays by cosine to 10%.
    """
    gen = torch.Generator().manual_seed(spec.seed)
    blocks = _pack(tokenizer, texts, spec.max_length, max(1, spec.warmup_steps * spec.batch_size), gen)
    order = torch.randperm(len(blocks), generator=gen)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=0.01)
    warm = max(1, spec.warmup_steps // 10)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        frac = (step - warm) / max(1, spec.warmup_steps - warm)
        return 0.1 + 0.45 * (1.0 + math.cos(math.pi * min(1.0, frac)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    model.train()
    torch.manual_seed(spec.seed)
    with small_model_threads(model):
        for step in range(spec.warmup_steps):
            idx = order[(torch.arange(spec.batch_size) + step * spec.batch_size) % len(blocks)]
            batch = blocks[idx]
            loss = model(input_ids=batch, labels=batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
    model.eval()
    return optimizer


@torch.no_grad()
def lm_loss(
    model: PreTrainedModel, tokenizer: Any, texts: list[str], max_length: int, batch_size: int = 16
) -> float:
    """Token-weighted mean next-token loss of ``texts`` (each truncated to ``max_length``)."""
    was_training = model.training
    model.eval()
    with small_model_threads(model):
        total, count = _sum_nll(model, tokenizer, texts, max_length, batch_size)
    model.train(was_training)
    return total / max(1, count)


def _sum_nll(model: PreTrainedModel, tokenizer: Any, texts: list[str], max_length: int,
             batch_size: int) -> tuple[float, int]:
    total, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start : start + batch_size], truncation=True, max_length=max_length,
                        padding=True, return_tensors="pt")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.float()
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                                                shift_labels.reshape(-1), ignore_index=-100, reduction="sum")
        total += float(nll)
        count += int((shift_labels != -100).sum())
    return total, count


def adam_moments_by_name(model: PreTrainedModel, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Optimizer state keyed by parameter name: {name: {exp_avg, exp_avg_sq}, betas, eps, step}."""
    group = optimizer.param_groups[0]
    out: dict[str, Any] = {"betas": tuple(float(b) for b in group["betas"]), "eps": float(group["eps"]),
                           "lr": float(group["lr"]), "weight_decay": float(group.get("weight_decay", 0.0))}
    step = 0
    for name, param in model.named_parameters():
        state = optimizer.state.get(param)
        if not state:
            continue
        out[name] = {"exp_avg": state["exp_avg"].detach().cpu().clone(),
                     "exp_avg_sq": state["exp_avg_sq"].detach().cpu().clone()}
        step = max(step, int(state["step"]))
    out["step"] = step
    return out


def save_checkpoint(
    directory: str | os.PathLike[str],
    model: PreTrainedModel,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer | None,
    meta: dict[str, Any],
) -> None:
    """Write safetensors weights, tokenizer, ``optimizer.pt`` (moments by name) and ``influmix_meta.json``."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    with hf_quiet():
        model.save_pretrained(str(path))
        tokenizer.save_pretrained(str(path))
    info = dict(meta)
    if optimizer is not None:
        moments = adam_moments_by_name(model, optimizer)
        torch.save(moments, path / OPTIMIZER_FILE)
        info.setdefault("step", moments["step"])
    info.setdefault("step", 0)
    info.setdefault("created", {
        "unix_time": int(time.time()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "host_platform": platform.platform(),
    })
    with open(path / META_FILE, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2, sort_keys=True, default=str)
