"""Tests for operators.training.probing (MATES one-step oracle and mixture probes)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from operators.errors import ConfigError, ModelError
from operators.training.probing import (
    OneStepProber,
    ProbeSpec,
    causal_lm_loss,
    probe_mixture,
    probe_trajectory,
    train_on_mixture,
    reference_loss,
)

VOCAB = 128
SEQ = 24


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg)


def counting(n: int, seed: int, length: int = SEQ) -> tuple[torch.Tensor, torch.Tensor]:
    """Structured sequences: (start + i) mod VOCAB."""
    starts = torch.from_numpy(np.random.default_rng(seed).integers(0, VOCAB, size=n))
    ids = (starts[:, None] + torch.arange(length)[None, :]) % VOCAB
    return ids.long(), torch.ones_like(ids)


def noise(n: int, seed: int, length: int = SEQ) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, length), generator=g)
    return ids, torch.ones_like(ids)


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def opt_state_equal(a: dict, b: dict) -> bool:
    if a["param_groups"] != b["param_groups"] or a["state"].keys() != b["state"].keys():
        return False
    for k in a["state"]:
        sa, sb = a["state"][k], b["state"][k]
        if sa.keys() != sb.keys() or not all(torch.equal(sa[n], sb[n]) for n in sa):
            return False
    return True


@pytest.fixture(scope="module")
def checkpoint() -> tuple[LlamaForCausalLM, dict]:
    """A model after a few AdamW steps, with its optimizer state (like a MATES checkpoint)."""
    model = tiny_llama(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    ids, mask = noise(8, seed=1)
    for s in range(3):
        opt.zero_grad()
        causal_lm_loss(model, ids[2 * s : 2 * s + 4], mask[2 * s : 2 * s + 4]).mean().backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model, copy.deepcopy(opt.state_dict())


def test_causal_lm_loss_matches_hf_loss_and_respects_padding() -> None:
    model = tiny_llama(3)
    ids, mask = counting(2, seed=5)
    mask = mask.clone()
    mask[1, 15:] = 0
    per_ex = causal_lm_loss(model, ids, mask)
    with torch.no_grad():
        hf0 = model(input_ids=ids[:1], labels=ids[:1]).loss
        hf1 = model(input_ids=ids[1:2, :15], labels=ids[1:2, :15]).loss
    assert torch.allclose(per_ex, torch.stack([hf0, hf1]), atol=1e-5)
    # Token-weighted reference loss = sum of token losses / number of valid targets.
    sums = causal_lm_loss(model, ids, mask, "sum_tokens").detach()
    expect = float(sums.sum() / mask[:, 1:].sum())
    assert reference_loss(model, ids, mask, batch_size=1) == pytest.approx(expect, rel=1e-6)


def test_one_step_probe_matches_manual_and_restores_state(checkpoint) -> None:
    model, opt_state = checkpoint
    spec = ProbeSpec(lr=1e-2, weight_decay=0.1, grad_clip=1.0, reference_batch_size=4)
    ref_ids, ref_mask = counting(6, seed=10)
    cand_ids, cand_mask = counting(1, seed=11)
    weights_before = copy.deepcopy(model.state_dict())
    opt_state_before = copy.deepcopy(opt_state)

    prober = OneStepProber(model, ref_ids, ref_mask, spec, optimizer_state=opt_state)
    delta = prober.probe(cand_ids, cand_mask)

    # Manual: copy the model, load the optimizer state, one AdamW step, measure.
    manual = copy.deepcopy(model)
    opt = torch.optim.AdamW(manual.parameters(), lr=1.0)
    opt.load_state_dict(copy.deepcopy(opt_state))
    for g in opt.param_groups:
        g.update(lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95))
    manual.eval()
    loss = causal_lm_loss(manual, cand_ids, cand_mask).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(manual.parameters()), 1.0)
    opt.step()
    expected = reference_loss(manual, ref_ids, ref_mask, 4) - reference_loss(model, ref_ids, ref_mask, 4)
    assert delta == pytest.approx(expected, abs=1e-6)
    assert abs(delta) > 1e-4  # the step actually changed the reference loss

    # A second probe gives the same value, and nothing has moved bitwise.
    assert prober.probe(cand_ids, cand_mask) == delta
    assert state_equal(model.state_dict(), weights_before)
    assert opt_state_equal(opt_state, opt_state_before)
    assert all(p.grad is None for p in model.parameters())


def test_probe_uses_the_optimizer_state() -> None:
    model = tiny_llama(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids, mask = noise(4, seed=2)
    causal_lm_loss(model, ids, mask).mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    ref = counting(4, seed=3)
    cand = counting(1, seed=4)
    spec = ProbeSpec(lr=1e-2)
    with_state = OneStepProber(model, *ref, spec, optimizer_state=opt.state_dict()).probe(*cand)
    fresh = OneStepProber(model, *ref, spec).probe(*cand)
    assert with_state != fresh


def test_matching_candidates_lower_reference_loss_more_than_noise() -> None:
    model = tiny_llama(1)
    ref_ids, ref_mask = counting(8, seed=20)
    spec = ProbeSpec(lr=1e-2, reference_batch_size=8)
    prober = OneStepProber(model, ref_ids, ref_mask, spec)
    matching = np.array([prober.probe(ref_ids[i], ref_mask[i]) for i in range(4)])  # one example each
    rand_ids, rand_mask = noise(4, seed=21)
    rand = np.array([prober.probe(rand_ids[i], rand_mask[i]) for i in range(4)])
    assert np.all(matching < 0)
    assert matching.mean() < rand.mean() - 0.01


def test_optimizer_state_mismatch_raises() -> None:
    model = tiny_llama(0)
    other = torch.nn.Linear(3, 3)
    opt = torch.optim.AdamW(other.parameters())
    other(torch.ones(1, 3)).sum().backward()
    opt.step()
    with pytest.raises(ModelError):
        OneStepProber(model, *counting(2, 0), ProbeSpec(), optimizer_state=opt.state_dict())


def test_probe_mixture_deterministic_and_does_not_mutate() -> None:
    model = tiny_llama(2)
    before = copy.deepcopy(model.state_dict())
    pools = {"count": counting(16, seed=30), "noise": noise(16, seed=31, length=SEQ - 4)}
    ref = counting(8, seed=32)
    spec = ProbeSpec(lr=1e-2, reference_batch_size=8)
    kw = dict(steps=4, batch_size=4, reference_ids=ref[0], reference_mask=ref[1], spec=spec)
    mix = {"count": 0.5, "noise": 0.5}
    a = probe_mixture(model, pools, mix, seed=7, **kw)
    b = probe_mixture(model, pools, mix, seed=7, **kw)
    c = probe_mixture(model, pools, mix, seed=8, **kw)
    assert a == b
    assert a != c  # a different seed draws different batches
    assert state_equal(model.state_dict(), before)
    # per example: summed-token changes whose total over the reference's tokens is the scalar ΔL
    per = probe_mixture(model, pools, mix, seed=7, per_example=True, **kw)
    assert per.shape == (8,) and per.sum() / float(ref[1][:, 1:].sum()) == pytest.approx(a, abs=1e-6)


def test_probes_of_close_mixtures_are_paired_by_seed() -> None:
    """Same seed, mixtures 0.5/0.5 and 0.55/0.45: the same examples per domain, so their ΔL differ far
    less than one mixture's ΔL across seeds (common random numbers)."""
    model = tiny_llama(2)
    pools = {"count": counting(16, seed=30), "noise": noise(16, seed=31, length=SEQ - 4)}
    ref = counting(8, seed=32)
    kw = dict(steps=5, batch_size=4, reference_ids=ref[0], reference_mask=ref[1],
              spec=ProbeSpec(lr=1e-2, reference_batch_size=8))
    a7 = probe_mixture(model, pools, {"count": 0.5, "noise": 0.5}, seed=7, **kw)
    b7 = probe_mixture(model, pools, {"count": 0.55, "noise": 0.45}, seed=7, **kw)
    seeds = [probe_mixture(model, pools, {"count": 0.5, "noise": 0.5}, seed=s, **kw) for s in (8, 9, 10)]
    assert abs(a7 - b7) < 0.25 * np.std([a7, *seeds])


def test_probe_mixture_matching_domain_beats_noise_domain() -> None:
    model = tiny_llama(3)
    pools = {"count": counting(24, seed=40), "noise": noise(24, seed=41)}
    ref = counting(8, seed=42)
    spec = ProbeSpec(lr=1e-2, reference_batch_size=8)
    kw = dict(steps=5, batch_size=4, reference_ids=ref[0], reference_mask=ref[1], spec=spec, seed=0)
    d_count = probe_mixture(model, pools, {"count": 1.0, "noise": 0.0}, **kw)
    d_noise = probe_mixture(model, pools, {"count": 0.0, "noise": 1.0}, **kw)
    assert d_count < 0
    assert d_count < d_noise - 0.05


def test_train_on_mixture_equals_probe_and_continues_optimizer() -> None:
    """Training in place gives exactly the probe's ΔL; two halves with the optimizer state carried over
    are a continued run (the Adam step counter keeps counting)."""
    model = tiny_llama(2)
    pools = {"count": counting(16, seed=30), "noise": noise(16, seed=31, length=SEQ - 4)}
    ref = counting(8, seed=32)
    spec = ProbeSpec(lr=1e-2, reference_batch_size=8)
    mix = {"count": 0.7, "noise": 0.3}
    probed = probe_mixture(model, pools, mix, 4, 4, ref[0], ref[1], spec, seed=7)
    work = copy.deepcopy(model)
    before = reference_loss(work, ref[0], ref[1], 8)
    opt = train_on_mixture(work, pools, mix, 4, 4, spec, seed=7)
    assert reference_loss(work, ref[0], ref[1], 8) - before == pytest.approx(probed, abs=1e-6)
    state = opt.state_dict()
    assert all(float(v["step"]) == 4 for v in state["state"].values())
    opt2 = train_on_mixture(work, pools, mix, 2, 4, spec, seed=8, optimizer_state=state)
    assert all(float(v["step"]) == 6 for v in opt2.state_dict()["state"].values())
    assert not state_equal(work.state_dict(), model.state_dict())


def test_probe_mixture_rejects_bad_weights() -> None:
    model = tiny_llama(0)
    pools = {"a": counting(4, 0)}
    ref = counting(2, 1)
    kw = dict(steps=1, batch_size=2, reference_ids=ref[0], reference_mask=ref[1], spec=ProbeSpec(), seed=0)
    with pytest.raises(ConfigError, match="without a pool"):
        probe_mixture(model, pools, {"b": 1.0}, **kw)
    with pytest.raises(ConfigError):
        probe_mixture(model, pools, {"a": 0.0}, **kw)


def test_probe_spec_is_frozen_and_strict() -> None:
    spec = ProbeSpec()
    with pytest.raises(Exception):
        spec.lr = 1.0  # type: ignore[misc]
    with pytest.raises(Exception):
        ProbeSpec(learning_rate=1.0)  # type: ignore[call-arg]
    with pytest.raises(Exception):
        ProbeSpec(betas=(0.9, 1.5))


def test_probe_trajectory_matches_probes_of_each_length() -> None:
    """One trajectory gives each reference example's loss at every requested step count: the same as
    separate probes of those lengths with the same seed (same batches), and the model is not mutated."""
    model = tiny_llama(2)
    before_state = copy.deepcopy(model.state_dict())
    pools = {"count": counting(16, seed=30), "noise": noise(16, seed=31, length=SEQ - 4)}
    ref = counting(8, seed=32)
    spec = ProbeSpec(lr=1e-2, reference_batch_size=8)
    mix = {"count": 0.6, "noise": 0.4}
    before, after = probe_trajectory(model, pools, mix, [2, 4], 4, ref[0], ref[1], spec, seed=7)
    assert before.shape == (8,) and after.shape == (2, 8)
    tokens = float(ref[1][:, 1:].sum())
    for row, steps in zip(after, (2, 4)):
        single = probe_mixture(model, pools, mix, steps, 4, ref[0], ref[1], spec, seed=7)
        assert (row - before).sum() / tokens == pytest.approx(single, abs=1e-6)
    assert state_equal(model.state_dict(), before_state)
    with pytest.raises(ConfigError, match="step counts"):
        probe_trajectory(model, pools, mix, [0, 4], 4, ref[0], ref[1], spec, seed=7)
