"""Per-example projected loss gradients of a causal LM's linear layers (one forward + one backward).

Forward hooks on the selected ``nn.Linear`` modules capture each layer's input ``x`` (B,T,in) and output;
a single ``torch.autograd.grad`` of ``Σ_i ℓ_i`` w.r.t. those outputs gives ``δ`` (B,T,out). The
per-example weight gradient is ``G_i = Σ_t δ_t x_tᵀ``; ``param.grad`` is never touched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from operators.errors import ConfigError, ModelError
from operators.features.projection import (
    BLOCK_ELEMS,
    KroneckerProjector,
    Projector,
    ProjectionSpec,
    build_projector,
)

LossReduction = Literal["mean", "sum"]


def select_linear_layers(
    model: nn.Module, include: str = ".*", exclude: str | None = "lm_head"
) -> dict[str, nn.Linear]:
    """``nn.Linear`` modules whose name matches ``include`` (re.search) and not ``exclude``, by name."""
    try:
        inc = re.compile(include)
        exc = re.compile(exclude) if exclude else None
    except re.error as err:
        raise ConfigError(
            f"featurize: invalid layer regex (include_layers={include!r}, exclude_layers={exclude!r}): {err}"
        ) from err
    found = {
        name: mod
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and inc.search(name) and not (exc and exc.search(name))
    }
    if not found:
        raise ConfigError(
            f"featurize: no nn.Linear layer matches include_layers={include!r} / exclude_layers={exclude!r}"
        )
    return dict(sorted(found.items()))


class FeaturizerSpec(BaseModel):
    """How to featurize: projection, which layers, per-example loss reduction, K-FAC factor collection."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    projection: ProjectionSpec = ProjectionSpec()
    include_layers: str = ".*"
    exclude_layers: str | None = "lm_head"
    loss_reduction: LossReduction = "mean"
    collect_kfac: bool = False


@dataclass
class FeatureBatch:
    """Features (B,k) float32 CPU, per-example losses (B,), predicted-token counts (B,), K-FAC sums.

    ``kfac[layer] = (Σ x̃x̃ᵀ, Σ δ̃δ̃ᵀ, n)`` over the batch's non-pad tokens (x̃ = P_in x, δ̃ = P_out δ).
    """

    features: torch.Tensor
    losses: torch.Tensor
    n_tokens: torch.Tensor
    kfac: dict[str, tuple[torch.Tensor, torch.Tensor, int]] | None = None


class AdamState:
    """Adam moments (out x in) of the selected layers' weights, for LESS Adam-aware features."""

    def __init__(
        self,
        exp_avg: dict[str, torch.Tensor],
        exp_avg_sq: dict[str, torch.Tensor],
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
    ) -> None:
        if set(exp_avg) != set(exp_avg_sq):
            raise ConfigError("AdamState: exp_avg and exp_avg_sq must cover the same layers")
        for name in exp_avg:
            if exp_avg[name].shape != exp_avg_sq[name].shape:
                raise ConfigError(f"AdamState: exp_avg/exp_avg_sq shapes differ for layer {name!r}")
        self.exp_avg = {k: v.detach().float().cpu() for k, v in sorted(exp_avg.items())}
        self.exp_avg_sq = {k: v.detach().float().cpu() for k, v in sorted(exp_avg_sq.items())}
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def transform(self, name: str, grads: torch.Tensor) -> torch.Tensor:
        """Γ = m'/sqrt(v'+eps), m' = β1 m + (1−β1) G, v' = β2 v + (1−β2) G² (no bias correction)."""
        m = self.exp_avg[name].to(grads.device)
        v = self.exp_avg_sq[name].to(grads.device)
        m_new = self.beta1 * m + (1.0 - self.beta1) * grads
        v_new = self.beta2 * v + (1.0 - self.beta2) * grads.square()
        return m_new / torch.sqrt(v_new + self.eps)


def causal_lm_losses(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, reduction: LossReduction
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example next-token loss (float32) and predicted-token counts; right padding assumed.

    Works on the whole (B, T, V) logits with the last position ignored, so neither the forward nor
    the backward copies a sliced logits tensor.
    """
    bsz, width, vocab = logits.shape
    logits = logits.float()
    ignore = torch.full((bsz, 1), -100, dtype=input_ids.dtype, device=input_ids.device)
    targets = torch.cat([input_ids[:, 1:], ignore], dim=1)
    tok = F.cross_entropy(logits.view(-1, vocab), targets.reshape(-1), reduction="none", ignore_index=-100)
    mask = attention_mask[:, 1:].to(tok.dtype)
    summed = (tok.view(bsz, width)[:, :-1] * mask).sum(dim=1)
    n_tokens = attention_mask[:, 1:].sum(dim=1).to(torch.int64)
    if reduction == "mean":
        summed = summed / n_tokens.clamp(min=1).to(summed.dtype)
    return summed, n_tokens


@contextmanager
def _require_weight_grad(layers: Mapping[str, nn.Linear]) -> Iterator[None]:
    """Temporarily make layer weights require grad, so their outputs join the autograd graph."""
    saved = [(m.weight, m.weight.requires_grad) for m in layers.values()]
    try:
        for w, _ in saved:
            w.requires_grad_(True)
        yield
    finally:
        for w, flag in saved:
            w.requires_grad_(flag)


def _forward_backward(
    model: nn.Module,
    layers: Mapping[str, nn.Linear],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    reduction: LossReduction,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, list[tuple[torch.Tensor, torch.Tensor]]]]:
    """One forward and one backward: losses, n_tokens and per layer [(x, δ)], one pair per layer call."""
    inputs: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    outputs: dict[str, list[torch.Tensor]] = {n: [] for n in layers}

    def make_hook(name: str):  # noqa: ANN202
        def hook(_mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
            inputs[name].append(args[0].detach())
            outputs[name].append(out)
        return hook

    handles = [mod.register_forward_hook(make_hook(name)) for name, mod in layers.items()]
    try:
        with torch.enable_grad(), _require_weight_grad(layers):
            out = model(input_ids=input_ids, attention_mask=attention_mask)
            logits = out.logits if hasattr(out, "logits") else out[0]
            silent = [n for n in layers if not outputs[n]]
            if silent:
                raise ModelError(f"featurize: selected layers {silent} were not called in the forward pass")
            losses, n_tokens = causal_lm_losses(logits, input_ids, attention_mask, reduction)
            flat = [o for n in layers for o in outputs[n]]
            deltas = torch.autograd.grad(losses.sum(), flat, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    captures: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    it = iter(deltas)
    for name in layers:
        pairs = []
        for x, out in zip(inputs[name], outputs[name]):
            d = next(it)
            pairs.append((x, torch.zeros_like(out) if d is None else d))
        captures[name] = pairs
    return losses.detach(), n_tokens, captures


def _resolve_layers(
    model: nn.Module, layers: Mapping[str, nn.Linear] | Iterable[str]
) -> dict[str, nn.Linear]:
    if isinstance(layers, Mapping):
        return dict(sorted(layers.items()))
    return {name: model.get_submodule(name) for name in sorted(layers)}  # type: ignore[misc]


def per_example_linear_grads(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layers: Mapping[str, nn.Linear] | Iterable[str],
    loss_reduction: LossReduction = "mean",
) -> dict[str, torch.Tensor]:
    """Exact per-example weight gradients {name: (B, out, in)} (at least float32) via one fwd+bwd."""
    mods = _resolve_layers(model, layers)
    _, _, captures = _forward_backward(model, mods, input_ids, attention_mask, loss_reduction)
    out = {}
    for name, pairs in captures.items():
        dtype = torch.promote_types(pairs[0][0].dtype, torch.float32)
        out[name] = _sum(torch.einsum("bto,bti->boi", d.to(dtype), x.to(dtype)) for x, d in pairs)
    return out


class GradientFeaturizer:
    """Projected per-example gradients of a causal LM (see module docstring).

    With ``adam_state`` the LESS Adam-aware transform is applied elementwise to each layer's full
    per-example gradient before projection; this path (and the dense one) forms ``Σ_t δ_t x_tᵀ`` for
    a few examples at a time. ``projector`` shares one projector between featurizers (e.g. the
    Adam-aware corpus featurizer and the plain target featurizer), so feature spaces match.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: FeaturizerSpec,
        device: str | torch.device = "cpu",
        adam_state: AdamState | None = None,
        projector: Projector | None = None,
    ) -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.layers = select_linear_layers(model, spec.include_layers, spec.exclude_layers)
        shapes = {n: (m.in_features, m.out_features) for n, m in self.layers.items()}
        if projector is None:
            projector = build_projector(spec.projection, shapes, self.device)
        elif projector.spec != spec.projection or projector.layers != dict(sorted(shapes.items())):
            raise ConfigError("featurize: the shared projector was built for another spec or layers")
        self.projector = projector
        self.adam_state = adam_state
        if adam_state is not None:
            for name, mod in self.layers.items():
                m = adam_state.exp_avg.get(name)
                if m is None or tuple(m.shape) != tuple(mod.weight.shape):
                    raise ConfigError(
                        f"featurize: adam_state lacks moments of shape {tuple(mod.weight.shape)} "
                        f"for layer {name!r}"
                    )

    @property
    def output_dim(self) -> int:
        return self.projector.output_dim

    @property
    def layer_names(self) -> list[str]:
        return self.projector.layer_names

    def describe(self) -> dict[str, object]:
        """Projector provenance plus layer filter, loss reduction and whether features are Adam-aware."""
        return {
            **self.projector.describe(),
            "include_layers": self.spec.include_layers,
            "exclude_layers": self.spec.exclude_layers,
            "loss_reduction": self.spec.loss_reduction,
            "adam_aware": self.adam_state is not None,
        }

    def featurize(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> FeatureBatch:
        """Features for one right-padded batch: exactly one forward and one backward pass."""
        if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
            raise ConfigError(
                f"featurize: input_ids {tuple(input_ids.shape)} and attention_mask "
                f"{tuple(attention_mask.shape)} must have the same (B, T) shape"
            )
        ids = input_ids.to(self.device)
        mask = attention_mask.to(self.device)
        losses, n_tokens, captures = _forward_backward(
            self.model, self.layers, ids, mask, self.spec.loss_reduction
        )
        proj = self.projector
        kron = isinstance(proj, KroneckerProjector)
        tok_mask = mask.to(torch.float32).unsqueeze(-1)
        kfac: dict[str, tuple[torch.Tensor, torch.Tensor, int]] | None = (
            {} if self.spec.collect_kfac and kron else None
        )
        parts: list[torch.Tensor] = []
        for name in proj.layer_names:
            if kron and self.adam_state is None:  # never forms the full (B, out, in) gradient
                assert isinstance(proj, KroneckerProjector)
                # δ is masked after projection (B,T,r), x not at all: δ_t = 0 zeroes x_t's term
                pairs = [(x.float() @ proj.p_in[name].T, (d.float() @ proj.p_out[name].T) * tok_mask)
                         for x, d in captures[name]]
                block = _sum(torch.einsum("bto,bti->boi", dt, xt) for xt, dt in pairs)
                parts.append(block.reshape(block.shape[0], -1))
                if kfac is not None:
                    xt = torch.cat([(x * tok_mask).flatten(0, 1) for x, _ in pairs])
                    dt = torch.cat([d.flatten(0, 1) for _, d in pairs])
                    kfac[name] = (xt.T @ xt).cpu(), (dt.T @ dt).cpu(), int(mask.sum().item()) * len(pairs)
            else:
                parts.append(self._project_full(name, captures[name], tok_mask))
        feats = torch.cat(parts, dim=1) if kron else _sum(parts)
        return FeatureBatch(
            features=feats.detach().to("cpu", torch.float32),
            losses=losses.to("cpu", torch.float32),
            n_tokens=n_tokens.to("cpu", torch.int64),
            kfac=kfac,
        )

    def _project_full(
        self, name: str, pairs: list[tuple[torch.Tensor, torch.Tensor]], tok_mask: torch.Tensor
    ) -> torch.Tensor:
        """Project full per-example gradients ``Σ_t δ_t x_tᵀ`` (Adam-transformed if set), formed for
        a few examples at a time so at most ``BLOCK_ELEMS`` gradient entries exist at once."""
        mod = self.layers[name]
        rows = pairs[0][0].shape[0]
        step = max(1, BLOCK_ELEMS // (mod.in_features * mod.out_features))
        out = []
        for s in range(0, rows, step):
            m = tok_mask[s:s + step]
            grad = _sum(torch.einsum("bto,bti->boi", d[s:s + step].float() * m, x[s:s + step].float())
                        for x, d in pairs)
            if self.adam_state is not None:
                grad = self.adam_state.transform(name, grad)
            out.append(self.projector.project_layer(name, grad))
        return torch.cat(out) if len(out) > 1 else out[0]

def _sum(items: Iterable[torch.Tensor]) -> torch.Tensor:
    """Left-to-right sum (fixed order, so results are reproducible)."""
    it = iter(items)
    total = next(it)
    for item in it:
        total = total + item
    return total
