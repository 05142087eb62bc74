"""Tests for operators.features.featurize: exact per-example grads, projected features, one fwd+bwd, Adam-aware path."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call, grad, vmap
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from operators.errors import ConfigError
from operators.features.featurize import (
    AdamState,
    FeaturizeSpec,
    GradientFeaturizer,
    causal_lm_losses,
    per_example_linear_grads,
    select_linear_layers,
)
from operators.features.projectors import PROJECTORS, ProjectionSpec, Projector

VOCAB = 128


def _llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).eval()


def _neox() -> GPTNeoXForCausalLM:
    torch.manual_seed(1)
    cfg = GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, tie_word_embeddings=False,
    )
    return GPTNeoXForCausalLM(cfg).eval()


MODELS = {"llama": (_llama, "lm_head"), "neox": (_neox, "embed_out")}


def _batch(b: int = 4, t: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded batch of unequal lengths (one full-length row)."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(3, t + 1, (b,), generator=g)
    lens[0] = t
    mask = (torch.arange(t)[None] < lens[:, None]).long()
    ids = torch.randint(0, VOCAB, (b, t), generator=g) * mask
    return ids, mask


def _func_grads(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, names: list[str], red: str) -> dict:
    """Reference per-example grads: torch.func vmap(grad(functional_call)).

    The mask is applied in the loss only: with right padding and causal attention, valid positions never
    see the pads, so dropping the attention mask (which vmap cannot trace in HF) changes nothing.
    """
    params = {n: p.detach() for n, p in model.named_parameters()}
    weights = {f"{n}.weight": params[f"{n}.weight"] for n in names}

    def loss(w: dict, i: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, {**params, **w}, (), {"input_ids": i[None]}).logits
        return causal_lm_losses(logits, i[None], a[None], red)[0].sum()

    out = vmap(grad(loss), in_dims=(None, 0, 0))(weights, ids, mask)
    return {n: out[f"{n}.weight"] for n in names}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("red", ["mean", "sum"])
def test_per_example_grads_match_torch_func(arch: str, red: str) -> None:
    make, head = MODELS[arch]
    model = make()
    ids, mask = _batch()
    layers = select_linear_layers(model, exclude=head)
    got = per_example_linear_grads(model, ids, mask, layers, loss_reduction=red)
    ref = _func_grads(model, ids, mask, list(layers), red)
    for name in layers:
        scale = float(ref[name].abs().max())
        assert scale > 0
        torch.testing.assert_close(got[name], ref[name], rtol=0, atol=1e-5 * scale)
    # padding does not leak: example 1 alone, unpadded, gives the same gradient
    n1 = int(mask[1].sum())
    alone = per_example_linear_grads(model, ids[1:2, :n1], mask[1:2, :n1], list(layers), loss_reduction=red)
    for name in layers:
        torch.testing.assert_close(alone[name][0], got[name][1], rtol=0, atol=1e-5 * float(got[name].abs().max()))


def test_losses_match_hf_loss() -> None:
    model = _llama()
    ids, mask = _batch()
    fz = GradientFeaturizer(model, FeaturizeSpec(projection=ProjectionSpec(rank=2)))
    batch = fz.featurize(ids, mask)
    assert torch.equal(batch.n_tokens, mask.sum(1) - 1)
    for i in range(ids.shape[0]):
        n = int(mask[i].sum())
        with torch.no_grad():
            hf = model(input_ids=ids[i : i + 1, :n], labels=ids[i : i + 1, :n]).loss
        torch.testing.assert_close(batch.losses[i], hf.float(), rtol=1e-5, atol=1e-6)


def test_select_linear_layers() -> None:
    model = _llama()
    all_layers = select_linear_layers(model)
    assert "lm_head" not in all_layers and len(all_layers) == 14 and list(all_layers) == sorted(all_layers)
    mlp = select_linear_layers(model, include=r"mlp\.(up|down)_proj", exclude=r"layers\.1\.")
    assert list(mlp) == ["model.layers.0.mlp.down_proj", "model.layers.0.mlp.up_proj"]
    assert "lm_head" in select_linear_layers(model, exclude=None)
    with pytest.raises(ConfigError, match="nothing_here"):
        select_linear_layers(model, include="nothing_here")
    with pytest.raises(ConfigError, match="include_layers"):
        select_linear_layers(model, include="(")


@pytest.mark.parametrize("kind", ["kronecker", "dense"])
@pytest.mark.parametrize("arch", sorted(MODELS))
def test_features_equal_projection_of_exact_grads(kind: str, arch: str) -> None:
    make, head = MODELS[arch]
    model = make()
    ids, mask = _batch(seed=3)
    spec = FeaturizeSpec(
        projection=ProjectionSpec(kind=kind, rank=4, dim=64, seed=1), exclude_layers=head, loss_reduction="sum",
    )
    fz = GradientFeaturizer(model, spec, collect_kfac=True)
    batch = fz.featurize(ids, mask)
    assert batch.features.shape == (4, fz.output_dim) and batch.features.dtype == torch.float32
    exact = per_example_linear_grads(model, ids, mask, fz.layer_names, loss_reduction="sum")
    expect = fz.projector.project(exact)
    torch.testing.assert_close(batch.features, expect, rtol=1e-4, atol=1e-5 * float(expect.abs().max()))
    if kind == "dense":
        assert batch.kfac is None
        return
    # K-FAC factor sums: over non-pad tokens of projected inputs / projected output grads
    assert batch.kfac is not None and set(batch.kfac) == set(fz.layer_names)
    name = fz.layer_names[0]
    mod = model.get_submodule(name)
    xs: list[torch.Tensor] = []
    h = mod.register_forward_hook(lambda _m, a, _o: xs.append(a[0].detach()))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    h.remove()
    xt = (xs[0] @ fz.projector.p_in[name].T)[mask.bool()]
    fwd, bwd, count = batch.kfac[name]
    assert count == int(mask.sum())
    torch.testing.assert_close(fwd, xt.T @ xt, rtol=1e-4, atol=1e-5)
    r_out = fz.projector.layer_shapes[name][0]
    assert bwd.shape == (r_out, r_out) and torch.all(torch.linalg.eigvalsh(bwd.double()) > -1e-6)


def test_one_forward_one_backward_and_no_side_effects() -> None:
    model = _llama()
    ids, mask = _batch()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits.clone()
    sentinel = torch.full_like(model.model.layers[0].mlp.up_proj.weight, 7.0)
    model.model.layers[0].mlp.up_proj.weight.grad = sentinel.clone()
    model.model.layers[1].self_attn.q_proj.weight.requires_grad_(False)  # partly frozen model
    fz = GradientFeaturizer(model, FeaturizeSpec(projection=ProjectionSpec(rank=4)))

    counts = {"forward": 0, "backward": 0, "grad_calls": 0}
    model.register_forward_hook(lambda *_: counts.__setitem__("forward", counts["forward"] + 1))
    model.lm_head.register_full_backward_hook(lambda *_: counts.__setitem__("backward", counts["backward"] + 1))
    orig_grad, orig_backward = torch.autograd.grad, torch.autograd.backward

    def counting_grad(*a, **k):  # noqa: ANN002, ANN003, ANN202
        counts["grad_calls"] += 1
        return orig_grad(*a, **k)

    def counting_backward(*a, **k):  # noqa: ANN002, ANN003, ANN202
        counts["grad_calls"] += 1
        return orig_backward(*a, **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(torch.autograd, "grad", counting_grad)
    mp.setattr(torch.autograd, "backward", counting_backward)
    try:
        fz.featurize(ids, mask)
    finally:
        mp.undo()
    assert counts == {"forward": 1, "backward": 1, "grad_calls": 1}

    for name, p in model.named_parameters():
        if name == "model.layers.0.mlp.up_proj.weight":
            assert torch.equal(p.grad, sentinel)  # not accumulated into
        else:
            assert p.grad is None, name
    assert not model.model.layers[1].self_attn.q_proj.weight.requires_grad  # flag restored
    assert model.model.layers[0].self_attn.q_proj.weight.requires_grad
    assert not model.training
    assert all(not m._forward_hooks for n, m in model.named_modules() if n)  # featurizer hooks removed
    with torch.no_grad():
        after = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(before, after)


def test_fully_frozen_model_still_featurizes() -> None:
    model = _llama()
    ids, mask = _batch()
    ref = GradientFeaturizer(model, FeaturizeSpec()).featurize(ids, mask).features
    model.requires_grad_(False)
    got = GradientFeaturizer(model, FeaturizeSpec()).featurize(ids, mask).features
    torch.testing.assert_close(got, ref)
    assert not any(p.requires_grad for p in model.parameters())


def test_bf16_model_features_close_to_fp32() -> None:
    ids, mask = _batch(seed=5)
    spec = FeaturizeSpec(projection=ProjectionSpec(kind="kronecker", rank=8))
    f32 = GradientFeaturizer(_llama(), spec).featurize(ids, mask).features
    bf = GradientFeaturizer(_llama().to(torch.bfloat16), spec).featurize(ids, mask)
    assert bf.features.dtype == torch.float32 and bf.losses.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(bf.features.double(), f32.double(), dim=1)
    assert torch.all(cos > 0.95)


def _adam_state(model: torch.nn.Module, names: list[str]) -> AdamState:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.95), eps=1e-6)
    ids, mask = _batch(seed=9)
    model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    weights = {n: model.get_submodule(n).weight for n in names}
    return AdamState({n: opt.state[w]["exp_avg"] for n, w in weights.items()},
                     {n: opt.state[w]["exp_avg_sq"] for n, w in weights.items()},
                     beta1=0.8, beta2=0.95, eps=1e-6)


@pytest.mark.parametrize("kind", ["kronecker", "dense"])
def test_adam_aware_features(kind: str) -> None:
    model = _llama()
    spec = FeaturizeSpec(projection=ProjectionSpec(kind=kind, rank=4, dim=64), include_layers=r"mlp")
    names = list(select_linear_layers(model, include=r"mlp"))
    state = _adam_state(model, names)
    assert (state.beta1, state.beta2, state.eps) == (0.8, 0.95, 1e-6)
    fz = GradientFeaturizer(model, spec, adam_state=state)
    assert fz.describe()["adam_aware"] is True
    ids, mask = _batch(seed=2)
    feats = fz.featurize(ids, mask).features
    exact = per_example_linear_grads(model, ids, mask, names, loss_reduction="mean")
    gamma = {}
    for n, g in exact.items():
        m = 0.8 * state.exp_avg[n] + 0.2 * g
        v = 0.95 * state.exp_avg_sq[n] + 0.05 * g**2
        gamma[n] = m / torch.sqrt(v + 1e-6)
    expect = fz.projector.project(gamma)
    torch.testing.assert_close(feats, expect, rtol=1e-4, atol=1e-5 * float(expect.abs().max()))
    assert not torch.allclose(feats, fz.projector.project(exact), rtol=0.1)


def test_adam_state_errors() -> None:
    model = _llama()
    moment = torch.zeros(4, 4)
    with pytest.raises(ConfigError, match="same layers"):
        AdamState({"a": moment}, {"b": moment})
    with pytest.raises(ConfigError, match="shapes differ for layer 'a'"):
        AdamState({"a": moment}, {"a": torch.zeros(4, 3)})
    state = _adam_state(model, ["model.layers.0.mlp.up_proj"])
    with pytest.raises(ConfigError, match="adam_state"):
        GradientFeaturizer(model, FeaturizeSpec(include_layers="mlp"), adam_state=state)


def _pair_cosines(f: torch.Tensor) -> torch.Tensor:
    f = f.double() / f.double().norm(dim=1, keepdim=True)
    iu = torch.triu_indices(f.shape[0], f.shape[0], 1)
    return (f @ f.T)[iu[0], iu[1]]


def test_jl_quality_on_per_example_gradients() -> None:
    model = _llama()
    ids, mask = _batch(b=16, t=16, seed=1)
    exact = per_example_linear_grads(model, ids, mask, select_linear_layers(model))
    flat = torch.cat([exact[n].reshape(16, -1) for n in sorted(exact)], dim=1)
    c = _pair_cosines(flat)

    def rmse_and_bound(kind: str, size: int) -> tuple[float, float]:
        fz = GradientFeaturizer(model, FeaturizeSpec(projection=ProjectionSpec(kind=kind, rank=size, dim=size, seed=2)))
        pc = _pair_cosines(fz.featurize(ids, mask).features)
        bound = float(((1 - c**2) ** 2).mean().sqrt()) / math.sqrt(fz.output_dim)
        return float(((pc - c) ** 2).mean().sqrt()), bound

    for k in (256, 1024):
        rmse, bound = rmse_and_bound("dense", k)
        assert 0.5 * bound < rmse < 1.5 * bound, (k, rmse, bound)
    # Kronecker: per-example grads are low-rank, so error is a few times the dense bound, shrinking with rank
    r2, b2 = rmse_and_bound("kronecker", 2)
    r8, b8 = rmse_and_bound("kronecker", 8)
    assert r2 < 4 * b2 and r8 < 4 * b8
    assert r8 < 0.5 * r2


def test_describe_and_input_validation() -> None:
    model = _llama()
    fz = GradientFeaturizer(model, FeaturizeSpec(projection=ProjectionSpec(rank=3, seed=4), include_layers="attn"))
    d = fz.describe()
    assert d["kind"] == "kronecker" and d["rank"] == 3 and d["seed"] == 4
    assert d["include_layers"] == "attn" and d["loss_reduction"] == "mean" and d["adam_aware"] is False
    assert d["layers"] == fz.layer_names and all("attn" in n for n in fz.layer_names)
    assert d["output_dim"] == fz.output_dim == 8 * 9
    with pytest.raises(ConfigError, match="attention_mask"):
        fz.featurize(torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 4, dtype=torch.long))


class _ToyProjector(Projector):
    """An unregistered kind: a plain Gaussian JL matrix per layer (base class's pair path, no K-FAC)."""

    kind = "toy"
    generator = "toy-v1"

    def __init__(self, spec: ProjectionSpec, layers: dict[str, tuple[int, int]], device: str = "cpu") -> None:
        super().__init__(spec, layers, device)
        g = torch.Generator().manual_seed(spec.seed)
        self.mats = {n: torch.randn(spec.dim, i * o, generator=g) for n, (i, o) in self.layers.items()}

    @property
    def output_dim(self) -> int:
        return self.spec.dim

    def size(self) -> dict[str, int]:
        return {"dim": self.spec.dim}

    def project_layer(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        return grad.reshape(grad.shape[0], -1).float() @ self.mats[name].T

    def combine(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(parts).sum(0)


def test_a_registered_projection_needs_no_featurizer_change(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown projection kind 'toy'"):
        ProjectionSpec(kind="toy")
    monkeypatch.setitem(PROJECTORS._items, "toy", _ToyProjector)
    model = _llama()
    spec = FeaturizeSpec(projection=ProjectionSpec(kind="toy", dim=16))
    fz = GradientFeaturizer(model, spec, collect_kfac=True)
    ids, mask = _batch()
    batch = fz.featurize(ids, mask)
    exact = per_example_linear_grads(model, ids, mask, fz.layer_names)
    expect = torch.stack([exact[n].flatten(1) @ fz.projector.mats[n].T for n in fz.layer_names]).sum(0)
    torch.testing.assert_close(batch.features, expect, rtol=1e-4, atol=1e-5 * float(expect.abs().max()))
    assert batch.kfac is None  # no K-FAC layout: nothing collected although the spec asks for it
    assert fz.describe()["kind"] == "toy" and fz.describe()["dim"] == 16 and "rank" not in fz.describe()
