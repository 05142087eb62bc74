"""MATES data influence model: a small transformer encoder regressing oracle probe labels.

``InfluenceModelSpec.kind`` picks the model: ``lm_ridge`` (default; operators/selection/influence_ridge.py, ridge
on frozen features of the checkpoint LM, for the few hundred labels a refresh affords) or ``bert`` (this
module). :func:`load_influence_model` reads either from bytes.

The encoder is a ``transformers`` BERT built from a config (no downloads) over the LM tokenizer's
vocabulary. Sequences longer than ``max_length`` are split into ``max_length`` windows that are
encoded separately; mean pooling runs over the valid tokens of all windows (as MATES does with
its 2 × 512 halves), then dropout and a linear head give one scalar.
"""

from __future__ import annotations

import io
import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import pearsonr, spearmanr
from torch import Tensor, nn
from transformers import BertConfig, BertModel

from operators.errors import ConfigError, CorpusError, ModelError

__all__ = [
    "InfluenceModelSpec",
    "DataInfluenceModel",
    "TrainedInfluenceModel",
    "train_influence_model",
    "load_influence_model",
]


class InfluenceModelSpec(BaseModel):
    """Architecture and training settings of the data influence model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["lm_ridge", "bert"] = Field(default="lm_ridge", description=(
        "lm_ridge: ridge on frozen features of the checkpoint LM; bert: a small encoder trained from scratch"))
    cv_folds: int = Field(default=5, ge=2, description="lm_ridge: k-fold CV over all labels")
    min_spearman: float = Field(default=0.2, description="usable only if the CV Spearman exceeds this ...")
    max_p: float = Field(default=0.01, gt=0, lt=1, description="... and is > 0 at this one-sided p-value")
    hidden_size: int = Field(default=64, ge=1)
    num_layers: int = Field(default=2, ge=1)
    num_heads: int = Field(default=4, ge=1)
    max_length: int = Field(default=128, ge=2)
    epochs: int = Field(default=20, ge=1)
    lr: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=0.01, ge=0.0)
    batch_size: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    val_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)
    seed: int = 0


class DataInfluenceModel(nn.Module):
    """BERT encoder → masked mean pooling → dropout → linear → scalar per example."""

    def __init__(self, spec: InfluenceModelSpec, vocab_size: int, pad_token_id: int) -> None:
        super().__init__()
        if spec.hidden_size % spec.num_heads != 0:
            raise ConfigError(
                f"influence model: hidden_size ({spec.hidden_size}) must be divisible by "
                f"num_heads ({spec.num_heads})"
            )
        if vocab_size < 1 or not 0 <= pad_token_id < vocab_size:
            raise ConfigError(
                f"influence model: need vocab_size >= 1 and 0 <= pad_token_id < vocab_size, "
                f"got {vocab_size}, {pad_token_id}"
            )
        self.spec = spec
        self.vocab_size = vocab_size
        self.pad_token_id = pad_token_id
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=spec.hidden_size,
            num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads,
            intermediate_size=4 * spec.hidden_size,
            max_position_embeddings=spec.max_length,
            type_vocab_size=1,
            hidden_dropout_prob=spec.dropout,
            attention_probs_dropout_prob=spec.dropout,
            pad_token_id=pad_token_id,
        )
        self.encoder = BertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(spec.dropout)
        self.head = nn.Linear(spec.hidden_size, 1)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Return (b,) standardised influence predictions."""
        b, t = input_ids.shape
        window = self.spec.max_length
        n_win = max(1, math.ceil(t / window))
        pad = n_win * window - t
        mask = attention_mask.long()
        ids = torch.where(mask.bool(), input_ids.long(), self.pad_token_id)
        if pad:
            ids = F.pad(ids, (0, pad), value=self.pad_token_id)
            mask = F.pad(mask, (0, pad), value=0)
        ids = ids.reshape(b * n_win, window)
        mask = mask.reshape(b * n_win, window)
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        valid = mask.bool().unsqueeze(-1)
        # torch.where (not multiply) so that NaNs from fully padded windows cannot leak in.
        hidden = torch.where(valid, hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device))
        summed = hidden.reshape(b, n_win * window, -1).sum(dim=1)
        counts = mask.reshape(b, -1).sum(dim=1).clamp_min(1).unsqueeze(-1).to(hidden.dtype)
        return self.head(self.dropout(summed / counts)).squeeze(-1)


def _check_inputs(input_ids: Tensor, attention_mask: Tensor, vocab_size: int | None) -> None:
    if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
        raise CorpusError(
            f"influence model: input_ids and attention_mask must both be (n, seq_len); got "
            f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
        )
    if vocab_size is not None and input_ids.numel():
        valid = input_ids[attention_mask.bool()]
        if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= vocab_size):
            raise CorpusError(f"influence model: input_ids contain ids outside [0, {vocab_size})")


def _trim(input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Drop trailing columns that are padding in every row (speed only)."""
    cols = attention_mask.bool().any(dim=0).nonzero()
    length = int(cols.max()) + 1 if cols.numel() else 1
    return input_ids[:, :length], attention_mask[:, :length]


def _predict_std(
    model: DataInfluenceModel, input_ids: Tensor, attention_mask: Tensor, batch_size: int
) -> np.ndarray:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    try:
        with torch.no_grad():
            for s in range(0, input_ids.shape[0], batch_size):
                ids, mask = _trim(input_ids[s : s + batch_size], attention_mask[s : s + batch_size])
                pred = model(ids.to(device), mask.to(device))
                out.append(pred.float().cpu().numpy().astype(np.float64))
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float64)


class TrainedInfluenceModel:
    """A fitted influence model plus label standardisation and validation metrics."""

    def __init__(
        self,
        model: DataInfluenceModel,
        label_mean: float,
        label_std: float,
        metrics: dict[str, float],
    ) -> None:
        self.model = model
        self.spec = model.spec
        self.label_mean = float(label_mean)
        self.label_std = float(label_std)
        self.metrics = dict(metrics)

    def predict(self, input_ids: Tensor, attention_mask: Tensor, batch_size: int = 64) -> np.ndarray:
        """Predicted influence in label units (de-standardised), float64 (n,)."""
        _check_inputs(input_ids, attention_mask, self.model.vocab_size)
        if batch_size < 1:
            raise ConfigError(f"predict: batch_size must be >= 1, got {batch_size}")
        z = _predict_std(self.model, input_ids, attention_mask, batch_size)
        return z * self.label_std + self.label_mean

    def to_bytes(self) -> bytes:
        """Serialise weights, spec, label statistics, vocab and metrics."""
        payload: dict[str, Any] = {
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "spec": self.spec.model_dump(),
            "label_mean": self.label_mean,
            "label_std": self.label_std,
            "vocab_size": self.model.vocab_size,
            "pad_token_id": self.model.pad_token_id,
            "metrics": self.metrics,
        }
        buf = io.BytesIO()
        torch.save(payload, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, device: str | torch.device = "cpu") -> TrainedInfluenceModel:
        """Inverse of ``to_bytes``; loads onto ``device`` (a ridge model's bytes give a RidgeInfluenceModel)."""
        if data[:6] == b"\x93NUMPY":
            return load_influence_model(data, device)  # type: ignore[return-value]
        try:
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            spec = InfluenceModelSpec(**payload["spec"])
            model = DataInfluenceModel(spec, int(payload["vocab_size"]), int(payload["pad_token_id"]))
            model.load_state_dict(payload["state_dict"])
        except (KeyError, RuntimeError, EOFError, TypeError, ValueError) as exc:
            raise ModelError(f"influence model bytes could not be loaded: {exc}") from exc
        model.to(device).eval()
        return cls(model, payload["label_mean"], payload["label_std"], payload["metrics"])


def _val_metrics(pred: np.ndarray, target: np.ndarray) -> tuple[float, float, float]:
    mse = float(np.mean((pred - target) ** 2))
    if np.ptp(pred) == 0 or np.ptp(target) == 0:
        return float("nan"), float("nan"), mse
    return float(spearmanr(pred, target)[0]), float(pearsonr(pred, target)[0]), mse


def train_influence_model(
    spec: InfluenceModelSpec,
    input_ids: Tensor,
    attention_mask: Tensor,
    labels: np.ndarray,
    vocab_size: int,
    pad_token_id: int,
    device: str | torch.device = "cpu",
) -> TrainedInfluenceModel:
    """Fit the influence model on z-scored labels (MSE, AdamW), keeping the best-Spearman epoch.

    The split is a seeded permutation (``val_fraction`` held out, at least one example on each
    side); μ and σ come from the training labels. ``val_mse`` is in standardised units. The
    global torch RNG is left untouched (training runs under ``torch.random.fork_rng``).
    """
    _check_inputs(input_ids, attention_mask, vocab_size)
    y = np.asarray(labels, dtype=np.float64)
    n = input_ids.shape[0]
    if y.shape != (n,):
        raise CorpusError(f"influence model: labels must have shape ({n},), got {y.shape}")
    if not np.all(np.isfinite(y)):
        raise CorpusError("influence model: labels contain NaN or inf")
    if n < 2:
        raise CorpusError(f"influence model: need at least 2 labelled examples, got {n}")
    rng = np.random.default_rng(spec.seed)
    perm = rng.permutation(n)
    n_val = min(n - 1, max(1, int(round(spec.val_fraction * n))))
    val_idx, train_idx = np.sort(perm[:n_val]), perm[n_val:]
    mu = float(y[train_idx].mean())
    sigma = float(y[train_idx].std())
    sigma = sigma if sigma > 1e-12 else 1.0
    z = torch.from_numpy((y - mu) / sigma).float()
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []

    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(spec.seed)
        model = DataInfluenceModel(spec, vocab_size, pad_token_id).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
        best: tuple[float, int, dict[str, Tensor], tuple[float, float, float]] | None = None
        for epoch in range(spec.epochs):
            model.train()
            order = train_idx[rng.permutation(len(train_idx))]
            for s in range(0, len(order), spec.batch_size):
                idx = torch.from_numpy(order[s : s + spec.batch_size])
                ids, mask = _trim(input_ids[idx], attention_mask[idx])
                loss = F.mse_loss(model(ids.to(device), mask.to(device)), z[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            vidx = torch.from_numpy(val_idx)
            pred = _predict_std(model, input_ids[vidx], attention_mask[vidx], spec.batch_size)
            scores = _val_metrics(pred, z[vidx].double().numpy())
            key = scores[0] if np.isfinite(scores[0]) else -np.inf
            if best is None or key > best[0]:
                state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best = (key, epoch, state, scores)
    assert best is not None  # epochs >= 1
    model.load_state_dict(best[2])
    model.eval()
    spear, pear, mse = best[3]
    metrics = {
        "val_spearman": spear,
        "val_pearson": pear,
        "val_mse": mse,
        "n_train": int(len(train_idx)),
        "n_val": int(n_val),
        "label_mean": mu,
        "label_std": sigma,
        "best_epoch": int(best[1]),
    }
    return TrainedInfluenceModel(model, mu, sigma, metrics)


def load_influence_model(data: bytes, device: str | torch.device = "cpu", **encoder_kwargs: Any):
    """Either kind from bytes: a RidgeInfluenceModel (``encoder_kwargs``: encoder, storage, cache_dir for
    its encoder LM) or a TrainedInfluenceModel; both have ``predict(input_ids, attention_mask)``."""
    if data[:6] == b"\x93NUMPY":
        from operators.selection.influence_ridge import RidgeInfluenceModel

        return RidgeInfluenceModel.from_bytes(data, device=str(device), **encoder_kwargs)
    return TrainedInfluenceModel.from_bytes(data, device=device)
