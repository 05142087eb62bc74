"""Measured influence by local probing.

* ``OneStepProber``: the MATES oracle. Take one optimizer step on a candidate from a fixed
  checkpoint (optionally with its optimizer state), measure the reference-loss change
  ``ΔL = L_ref(after) − L_ref(before)`` and restore everything exactly.
* ``train_on_mixture``: continue training a model in place on batches drawn from domains by mixture
  weights (continuing its AdamW state); returns the optimizer.
* ``probe_mixture``: short-horizon mixture probe (TiKMiX-M labels): ``train_on_mixture`` on a copy
  of the model, return the reference ΔL.
* ``probe_trajectory``: the same probe, each reference example's summed loss before training and at
  several step counts along it (validation: per-target losses and the stage-horizon extrapolation).

Loss convention (shared with the featurizer): causal next-token loss, targets
``input_ids[:, 1:]``, logits ``[:, :-1]``, mask ``attention_mask[:, 1:]`` (right padding).
Dropout is disabled (eval mode) during probe steps so that probes are deterministic.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn

from operators.model.optimizer_state import SOURCE_CHECKPOINT, grouped_params, plain_state_dict
from operators.training.blend import DomainStream, blend_schedule
from operators.errors import ConfigError, CorpusError, ModelError

__all__ = [
    "ProbeSpec",
    "causal_lm_loss",
    "reference_loss",
    "reference_token_sums",
    "OneStepProber",
    "probe_mixture",
    "probe_trajectory",
    "train_on_mixture",
]

Reduction = Literal["mean_tokens", "sum_tokens", "none"]


class ProbeSpec(BaseModel):
    """Optimizer settings of a probe step and the reference-set batch size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = Field(default=1.0, gt=0.0)
    reference_batch_size: int = Field(default=16, ge=1)
    hyperparameters: Literal["auto", "config", "checkpoint"] = Field(default="auto", description=(
        "where a probe continuing a checkpoint's optimizer state takes lr, betas, eps and weight decay: "
        "checkpoint = its param groups (current lr from scheduler.pt / trainer_state.json); config = these "
        "settings; auto = the checkpoint's when its optimizer.pt is a training stack's torch state_dict "
        "(e.g. the HF Trainer's), else these settings"))

    @field_validator("betas")
    @classmethod
    def _check_betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError("betas must lie in [0, 1)")
        return v


def _check_batch(input_ids: Tensor, attention_mask: Tensor, name: str) -> None:
    if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
        raise CorpusError(
            f"{name}: input_ids and attention_mask must both be (batch, seq_len); got "
            f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
        )
    if input_ids.shape[0] == 0 or input_ids.shape[1] < 2:
        raise CorpusError(f"{name}: need at least one example of at least 2 tokens")


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration as exc:
        raise ModelError("model has no parameters") from exc


def causal_lm_loss(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    reduction: Reduction = "mean_tokens",
) -> Tensor:
    """Causal next-token loss of each example.

    ``reduction``: ``"mean_tokens"`` → (b,) mean over the example's valid target tokens (0 when it
    has none); ``"sum_tokens"`` → (b,) sum; ``"none"`` → (b, T−1) masked per-token losses.
    Computed in float32; differentiable when grad is enabled.
    """
    device = _device_of(model)
    input_ids = input_ids.to(device)
    attention_mask = attention_mask.to(device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    targets = input_ids[:, 1:]
    mask = attention_mask[:, 1:].to(torch.float32)
    shifted = logits[:, :-1, :].float()
    tok = F.cross_entropy(
        shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), reduction="none"
    ).view_as(mask) * mask
    if reduction == "none":
        return tok
    sums = tok.sum(dim=1)
    if reduction == "sum_tokens":
        return sums
    if reduction == "mean_tokens":
        return sums / mask.sum(dim=1).clamp_min(1.0)
    raise ConfigError(f"causal_lm_loss: unknown reduction {reduction!r}")


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def reference_loss(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, batch_size: int
) -> float:
    """Token-weighted mean causal loss over a reference set (eval mode, no grad)."""
    _check_batch(input_ids, attention_mask, "reference set")
    if batch_size < 1:
        raise ConfigError(f"reference batch_size must be >= 1, got {batch_size}")
    total, count = 0.0, 0.0
    with _eval_mode(model), torch.no_grad():
        for start in range(0, input_ids.shape[0], batch_size):
            ids = input_ids[start : start + batch_size]
            mask = attention_mask[start : start + batch_size]
            total += float(causal_lm_loss(model, ids, mask, "sum_tokens").double().sum())
            count += float(mask[:, 1:].double().sum())
    if count == 0:
        raise CorpusError("reference set has no valid target tokens (attention_mask[:, 1:] all 0)")
    return total / count


def reference_token_sums(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, batch_size: int
) -> np.ndarray:
    """(n,) summed next-token loss of each reference example (eval mode, no grad), float64."""
    _check_batch(input_ids, attention_mask, "reference set")
    out = []
    with _eval_mode(model), torch.no_grad():
        for start in range(0, input_ids.shape[0], batch_size):
            ids = input_ids[start : start + batch_size]
            mask = attention_mask[start : start + batch_size]
            out.append(causal_lm_loss(model, ids, mask, "sum_tokens").double().cpu().numpy())
    return np.concatenate(out)


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ModelError("model has no trainable parameters")
    return params


def checkpoint_hyperparameters(spec: ProbeSpec, state: dict | None) -> bool:
    """Whether a probe keeps the hyperparameters of ``state``'s param groups instead of ``spec``'s."""
    if state is None or spec.optimizer != "adamw" or spec.hyperparameters == "config":
        return False
    return spec.hyperparameters == "checkpoint" or state.get("hyperparameters_from") == SOURCE_CHECKPOINT


def _make_optimizer(
    params: list[nn.Parameter], spec: ProbeSpec, state: dict | None
) -> torch.optim.Optimizer:
    """Build the probe optimizer; a loaded state keeps its moments (and its param groups). The spec sets
    the hyperparameters unless :func:`checkpoint_hyperparameters` says the checkpoint's are kept."""
    opt: torch.optim.Optimizer
    try:
        groups = grouped_params(params, state)
    except (IndexError, KeyError, TypeError) as exc:
        raise ModelError(f"optimizer_state does not fit the model's trainable parameters: {exc}") from exc
    if spec.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)
    else:
        opt = torch.optim.SGD(groups, lr=spec.lr, weight_decay=spec.weight_decay)
    if state is not None:
        try:
            opt.load_state_dict(copy.deepcopy(plain_state_dict(state)))
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ModelError(
                f"optimizer_state does not fit the model's trainable parameters: {exc}"
            ) from exc
        if not checkpoint_hyperparameters(spec, state):
            for group in opt.param_groups:
                group["lr"] = spec.lr
                group["weight_decay"] = spec.weight_decay
                if spec.optimizer == "adamw":
                    group["betas"] = spec.betas
    return opt


def _train_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    params: list[nn.Parameter],
    input_ids: Tensor,
    attention_mask: Tensor,
    grad_clip: float | None,
) -> None:
    """One optimizer step on the token-weighted mean loss of a batch."""
    for p in params:
        p.grad = None
    sums = causal_lm_loss(model, input_ids, attention_mask, "sum_tokens")
    n_tok = attention_mask[:, 1:].sum().clamp_min(1).to(sums.device, torch.float32)
    (sums.sum() / n_tok).backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    for p in params:
        p.grad = None


class OneStepProber:
    """MATES oracle: ΔL_ref after one optimizer step on a candidate, from a fixed snapshot."""

    def __init__(
        self,
        model: nn.Module,
        reference_ids: Tensor,
        reference_mask: Tensor,
        spec: ProbeSpec,
        optimizer_state: dict | None = None,
    ) -> None:
        _check_batch(reference_ids, reference_mask, "reference set")
        self.model = model
        self.spec = spec
        self.reference_ids = reference_ids
        self.reference_mask = reference_mask
        self._params = _trainable(model)
        self._snapshot = [p.detach().clone() for p in self._params]
        self._opt_state = copy.deepcopy(optimizer_state) if optimizer_state is not None else None
        _make_optimizer(self._params, spec, self._opt_state)  # validate the state once
        self._base: float | None = None

    @property
    def base_loss(self) -> float:
        """L_ref(before), computed once and cached."""
        if self._base is None:
            self._base = self._ref_loss()
        return self._base

    def _ref_loss(self) -> float:
        return reference_loss(
            self.model, self.reference_ids, self.reference_mask, self.spec.reference_batch_size
        )

    def _restore(self) -> None:
        with torch.no_grad():
            for p, saved in zip(self._params, self._snapshot, strict=True):
                p.copy_(saved)

    def probe(self, input_ids: Tensor, attention_mask: Tensor) -> float:
        """ΔL_ref = L_ref(after one step on the batch) − L_ref(before); the model is restored."""
        if input_ids.dim() == 1:
            input_ids, attention_mask = input_ids[None], attention_mask[None]
        _check_batch(input_ids, attention_mask, "probe candidate")
        base = self.base_loss
        saved_grads = [p.grad for p in self._params]
        was_training = self.model.training
        opt = _make_optimizer(self._params, self.spec, self._opt_state)
        try:
            self.model.eval()
            _train_step(self.model, opt, self._params, input_ids, attention_mask, self.spec.grad_clip)
            after = self._ref_loss()
        finally:
            self._restore()
            for p, g in zip(self._params, saved_grads, strict=True):
                p.grad = g
            self.model.train(was_training)
        return after - base


def _normalised_weights(
    domain_pools: dict[str, tuple[Tensor, Tensor]], weights: dict[str, float]
) -> tuple[list[str], np.ndarray]:
    unknown = sorted(set(weights) - set(domain_pools))
    if unknown:
        raise ConfigError(f"probe_mixture: weights name domains without a pool: {unknown}")
    names = sorted(d for d, w in weights.items() if w > 0)
    w = np.array([float(weights[d]) for d in names], dtype=np.float64)
    if any(not np.isfinite(float(v)) or v < 0 for v in weights.values()) or w.sum() <= 0:
        raise ConfigError("probe_mixture: weights must be finite, >= 0 and not all zero")
    for d in names:
        ids, mask = domain_pools[d]
        _check_batch(ids, mask, f"domain pool {d!r}")
    return names, w / w.sum()


def _pad_cat(rows: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Concatenate (1, T_i) rows, right-padding to the longest (pad value 0, mask 0)."""
    length = max(r[0].shape[1] for r in rows)
    ids = [F.pad(r[0].long(), (0, length - r[0].shape[1])) for r in rows]
    masks = [F.pad(r[1].long(), (0, length - r[1].shape[1])) for r in rows]
    return torch.cat(ids), torch.cat(masks)


def train_on_mixture(
    model: nn.Module,
    domain_pools: dict[str, tuple[Tensor, Tensor]],
    weights: dict[str, float],
    steps: int,
    batch_size: int,
    spec: ProbeSpec,
    seed: int,
    optimizer_state: dict | None = None,
    after_step: Callable[[int], None] | None = None,
) -> torch.optim.Optimizer:
    """Train ``model`` IN PLACE for ``steps`` mixture batches; return the optimizer (its state continues).

    Batches follow :mod:`operators.training.blend`: slot ``i`` of the run (batch ``i // batch_size``) goes to
    the domain with the largest running deficit of ``weights``, and each domain hands out its
    examples in its own order seeded by ``(seed, domain)``, reshuffled at each pass over its pool. So
    the same seed gives every mixture the same examples of each domain (paired comparisons), and the
    run's domain counts match the weights to within one example. ``optimizer_state`` (a torch
    AdamW/SGD ``state_dict``, e.g. :func:`operators.model.loading.checkpoint_adam_state` or the previous
    call's ``optimizer.state_dict()``) is continued, with its param groups; the spec sets lr, betas and
    weight decay unless the state's own are kept (``spec.hyperparameters``). Steps run in eval mode (no
    dropout), so the same seed gives the same model. ``after_step(i)`` is called after step i (1-based),
    e.g. to measure the model along the way.
    """
    if steps < 0 or batch_size < 1:
        raise ConfigError(f"train_on_mixture: need steps >= 0 and batch_size >= 1, got {steps}, {batch_size}")
    names, probs = _normalised_weights(domain_pools, weights)
    params = _trainable(model)
    opt = _make_optimizer(params, spec, optimizer_state)
    streams = [DomainStream(domain_pools[d][0].shape[0], seed, d) for d in names]
    schedule = blend_schedule(probs, steps * batch_size).reshape(steps, batch_size)
    with _eval_mode(model):
        for step, slots in enumerate(schedule, start=1):
            rows: list[tuple[Tensor, Tensor]] = []
            for k in sorted(slots.tolist()):
                ids, mask = domain_pools[names[k]]
                i = streams[k].next()
                rows.append((ids[i : i + 1], mask[i : i + 1]))
            batch_ids, batch_mask = _pad_cat(rows)
            _train_step(model, opt, params, batch_ids, batch_mask, spec.grad_clip)
            if after_step is not None:
                after_step(step)
    return opt


def probe_mixture(
    model: nn.Module,
    domain_pools: dict[str, tuple[Tensor, Tensor]],
    weights: dict[str, float],
    steps: int,
    batch_size: int,
    reference_ids: Tensor,
    reference_mask: Tensor,
    spec: ProbeSpec,
    seed: int,
    optimizer_state: dict | None = None,
    per_example: bool = False,
) -> float | np.ndarray:
    """Train a copy of ``model`` for ``steps`` mixture batches; return L_ref(after) − L_ref(before).

    ``per_example``: return instead the (n,) change of each reference example's summed token loss
    (their sum over the reference's token count is the scalar ΔL), for resampling the reference set.

    Batches are drawn as in :func:`train_on_mixture` (same seed, same batches). ``model`` is not mutated.
    """
    if steps < 0 or batch_size < 1:
        raise ConfigError(f"probe_mixture: need steps >= 0 and batch_size >= 1, got {steps}, {batch_size}")
    _check_batch(reference_ids, reference_mask, "reference set")
    _normalised_weights(domain_pools, weights)
    ref_loss = reference_token_sums if per_example else reference_loss
    before = ref_loss(model, reference_ids, reference_mask, spec.reference_batch_size)
    work = copy.deepcopy(model)
    train_on_mixture(work, domain_pools, weights, steps, batch_size, spec, seed, optimizer_state)
    after = ref_loss(work, reference_ids, reference_mask, spec.reference_batch_size)
    return after - before


def probe_trajectory(
    model: nn.Module,
    domain_pools: dict[str, tuple[Tensor, Tensor]],
    weights: dict[str, float],
    points: Sequence[int],
    batch_size: int,
    reference_ids: Tensor,
    reference_mask: Tensor,
    spec: ProbeSpec,
    seed: int,
    optimizer_state: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Train a copy of ``model`` for ``max(points)`` mixture batches → (before (n,), after (P, n)): each
    reference example's summed token loss before training and after each of the step counts ``points``.

    Batches are drawn as in :func:`train_on_mixture`; the last row minus ``before``, summed and divided
    by the reference's token count, is :func:`probe_mixture`'s ΔL. ``model`` is not mutated."""
    pts = sorted({int(p) for p in points})
    if not pts or pts[0] < 1 or batch_size < 1:
        raise ConfigError(f"probe_trajectory: need step counts >= 1 and batch_size >= 1, got {list(points)}, "
                          f"{batch_size}")
    _check_batch(reference_ids, reference_mask, "reference set")
    _normalised_weights(domain_pools, weights)
    bs = spec.reference_batch_size
    before = reference_token_sums(model, reference_ids, reference_mask, bs)
    work = copy.deepcopy(model)
    after: dict[int, np.ndarray] = {}
    wanted = set(pts)

    def measure(step: int) -> None:
        if step in wanted:
            after[step] = reference_token_sums(work, reference_ids, reference_mask, bs)

    train_on_mixture(work, domain_pools, weights, pts[-1], batch_size, spec, seed, optimizer_state, measure)
    return before, np.stack([after[p] for p in pts])
