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
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from operators.errors import ConfigError, ModelError
from operators.features.projectors import ProjectionSpec, Projector, build_projector
from operators.features.projectors.base import KfacSums, ordered_sum

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


class FeaturizeSpec(BaseModel):
    """Per-example gradient features: projection, which layers, loss reduction, batching, part size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    projection: ProjectionSpec = ProjectionSpec()
    include_layers: str = ".*"
    exclude_layers: str | None = "lm_head|embed_out"  # output heads (Llama, GPT-NeoX)
    loss_reduction: LossReduction = "mean"
    max_length: int = Field(default=128, ge=2)
    batch_size: int = Field(default=16, ge=1)
    adam_aware: bool = False
    part_rows: int | None = Field(default=None, ge=1)  # rows per feature part (None: 64 MiB of features)


@dataclass
class FeatureBatch:
    """Features (B,k) float32 CPU, per-example losses (B,), predicted-token counts (B,), K-FAC sums.

    ``kfac[layer] = (Σ x̃x̃ᵀ, Σ δ̃δ̃ᵀ, n)`` over the batch's non-pad tokens (x̃ = P_in x, δ̃ = P_out δ).
    """

    features: torch.Tensor
    losses: torch.Tensor
    n_tokens: torch.Tensor
    kfac: dict[str, KfacSums] | None = None


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
        out[name] = ordered_sum(torch.einsum("bto,bti->boi", d.to(dtype), x.to(dtype)) for x, d in pairs)
    return out


class GradientFeaturizer:
    """Projected per-example gradients of a causal LM (see module docstring).

    Each layer's (input, output-grad) pairs go to :meth:`Projector.project_pairs`. With ``adam_state``
    the LESS Adam-aware transform is applied elementwise to each layer's full per-example gradient
    before projection. K-FAC factor sums are collected when the spec asks for them and the projector
    has a K-FAC block layout. ``projector`` shares one projector between featurizers (e.g. the
    Adam-aware corpus featurizer and the plain target featurizer), so feature spaces match.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: FeaturizeSpec,
        device: str | torch.device = "cpu",
        adam_state: AdamState | None = None,
        projector: Projector | None = None,
        collect_kfac: bool = False,
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
        self.collect_kfac = collect_kfac and projector.kfac_layout() is not None
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
        tok_mask = mask.to(torch.float32).unsqueeze(-1)
        transform = None if self.adam_state is None else self.adam_state.transform
        kfac: dict[str, KfacSums] | None = {} if self.collect_kfac else None
        parts: list[torch.Tensor] = []
        for name in proj.layer_names:
            part, sums = proj.project_pairs(name, captures[name], tok_mask, transform, kfac is not None)
            parts.append(part)
            if kfac is not None and sums is not None:
                kfac[name] = sums
        feats = proj.combine(parts)
        return FeatureBatch(
            features=feats.detach().to("cpu", torch.float32),
            losses=losses.to("cpu", torch.float32),
            n_tokens=n_tokens.to("cpu", torch.int64),
            kfac=kfac,
        )
