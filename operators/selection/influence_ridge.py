"""MATES data influence model for few labels: ridge on frozen features of the checkpoint LM itself.

MATES fine-tunes a pretrained bert-base on ~80k oracle labels. With hundreds of labels a randomly
initialised encoder cannot generalise, but the checkpoint being trained is itself a pretrained encoder
that needs no download: each example is described by its masked mean-pooled hidden states of every
layer, its mean token loss and its log length (:func:`lm_features`), and a ridge regression maps them to
the z-scored oracle label. Alpha is chosen by k-fold cross-validation over ALL labels, and the
out-of-fold predictions give the reported CV Spearman with a one-sided p-value; the model is ``usable``
only when that Spearman (within domains, when the domains are given) exceeds a threshold and is
significantly above 0.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import Tensor, nn

from operators.errors import CorpusError, ModelError

ALPHAS = np.logspace(-2, 5, 22)


@torch.no_grad()
def lm_features(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, batch_size: int = 32) -> np.ndarray:
    """(n, (L+1)·H + 2) float64: mean-pooled hidden states per layer, mean token loss, log #tokens."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for s in range(0, input_ids.shape[0], batch_size):
            ids = input_ids[s : s + batch_size].to(device)
            mask = attention_mask[s : s + batch_size].to(device)
            res = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            m = mask.unsqueeze(-1).float()
            count = m.sum(dim=1).clamp_min(1.0)
            pooled = [(torch.where(m.bool(), h.float(), 0.0)).sum(dim=1) / count for h in res.hidden_states]
            logits = res.logits[:, :-1].float()
            tok = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                    reduction="none").view(ids.shape[0], -1)
            tmask = mask[:, 1:].float()
            loss = (tok * tmask).sum(dim=1) / tmask.sum(dim=1).clamp_min(1.0)
            extra = torch.stack([loss, torch.log(count[:, 0])], dim=1)
            out.append(torch.cat([*pooled, extra], dim=1).double().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0))


def _ridge(Z: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    U, S, Vt = np.linalg.svd(Z, full_matrices=False)
    return Vt.T @ (S / (S**2 + alpha) * (U.T @ y))


def _standardize(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu, sd = X.mean(axis=0), X.std(axis=0)
    return mu, np.where(sd > 1e-12, sd, 1.0)


def cv_ridge(X: np.ndarray, y: np.ndarray, folds: int, seed: int) -> tuple[float, np.ndarray]:
    """Alpha with the smallest k-fold MSE (standardisation fitted per fold) and its out-of-fold predictions."""
    fold = np.random.default_rng(seed).permutation(y.size) % folds
    best: tuple[float, float, np.ndarray] = (np.inf, float(ALPHAS[0]), np.zeros_like(y))
    for alpha in ALPHAS:
        pred = np.empty_like(y)
        for f in range(folds):
            tr = fold != f
            mu, sd = _standardize(X[tr])
            ym = y[tr].mean()
            pred[~tr] = ((X[~tr] - mu) / sd) @ _ridge((X[tr] - mu) / sd, y[tr] - ym, float(alpha)) + ym
        mse = float(np.mean((pred - y) ** 2))
        if mse < best[0]:
            best = (mse, float(alpha), pred)
    return best[1], best[2]


class RidgeInfluenceModel:
    """Ridge on :func:`lm_features` of an encoder LM (kept out of the bytes: only its uri is stored)."""

    kind = "lm_ridge"

    def __init__(self, coef: np.ndarray, intercept: float, mu: np.ndarray, sd: np.ndarray, alpha: float,
                 metrics: dict[str, Any], encoder_uri: str, encoder: nn.Module | None = None) -> None:
        self.coef, self.intercept, self.mu, self.sd = coef, float(intercept), mu, sd
        self.alpha, self.metrics = float(alpha), dict(metrics)
        self.encoder_uri, self.encoder = encoder_uri, encoder

    @property
    def usable(self) -> bool:
        return bool(self.metrics.get("usable", False))

    def predict_features(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mu) / self.sd) @ self.coef + self.intercept

    def predict(self, input_ids: Tensor, attention_mask: Tensor, batch_size: int = 32) -> np.ndarray:
        """Predicted oracle label (ΔL units) per example; needs the encoder (``from_bytes`` loads it)."""
        if self.encoder is None:
            raise ModelError("RidgeInfluenceModel.predict needs its encoder LM; load with from_bytes")
        if input_ids.shape[0] == 0:
            return np.zeros(0)
        return self.predict_features(lm_features(self.encoder, input_ids, attention_mask, batch_size))

    def to_bytes(self) -> bytes:
        payload = {"kind": self.kind, "coef": self.coef, "intercept": self.intercept, "mu": self.mu,
                   "sd": self.sd, "alpha": self.alpha, "metrics": self.metrics, "encoder_uri": self.encoder_uri}
        buf = io.BytesIO()
        np.save(buf, np.array(payload, dtype=object), allow_pickle=True)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, device: str = "cpu", encoder: nn.Module | None = None,
                   storage: Any = None, cache_dir: str | None = None) -> RidgeInfluenceModel:
        """Inverse of ``to_bytes``; loads the encoder LM from its stored uri unless one is given."""
        try:
            p = np.load(io.BytesIO(data), allow_pickle=True).item()
        except (ValueError, OSError, EOFError) as exc:
            raise ModelError(f"ridge influence model bytes could not be loaded: {exc}") from exc
        if encoder is None:
            from operators.model.loading import load_causal_lm

            encoder = load_causal_lm(p["encoder_uri"], device=device, dtype="float32", storage=storage,
                                     cache_dir=cache_dir).model
        return cls(p["coef"], p["intercept"], p["mu"], p["sd"], p["alpha"], p["metrics"], p["encoder_uri"],
                   encoder.eval())


def _one_sided_spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Spearman of a and b and its one-sided p-value for > 0 (0, 1 when either is constant)."""
    if np.ptp(a) <= 0 or np.ptp(b) <= 0:
        return 0.0, 1.0
    rho, p_two = spearmanr(a, b)
    rho = float(rho) if np.isfinite(rho) else 0.0
    return rho, (float(p_two) / 2 if rho > 0 else 1.0 - float(p_two) / 2)


def _demean(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    out = x.astype(np.float64).copy()
    for g in np.unique(groups):
        out[groups == g] -= out[groups == g].mean()
    return out


def fit_ridge_influence(X: np.ndarray, labels: np.ndarray, encoder_uri: str, folds: int = 5, seed: int = 0,
                        min_spearman: float = 0.2, max_p: float = 0.01, encoder: nn.Module | None = None,
                        groups: np.ndarray | None = None) -> RidgeInfluenceModel:
    """Fit on all labels; metrics: k-fold CV Spearman/R² over all labels, its p-value, ``usable``.

    With ``groups`` (the domain of each label) the Spearman that decides ``usable`` is the WITHIN-group
    one (labels and out-of-fold predictions centred per group): selection happens inside domain quotas,
    so telling domains apart is worth nothing to it.
    """
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if X.ndim != 2 or X.shape[0] != y.size or y.size < 2 * folds or not np.all(np.isfinite(y)):
        raise CorpusError(f"ridge influence model: need >= {2 * folds} finite labels, one per feature row; "
                          f"got {y.size} labels for {X.shape[0]} rows")
    lm, ls = float(y.mean()), float(y.std()) or 1.0
    z = (y - lm) / ls
    alpha, oof = cv_ridge(X, z, folds, seed)
    rho, p = _one_sided_spearman(oof, z)
    decide_rho, decide_p = rho, p
    within: dict[str, Any] = {}
    if groups is not None:
        g = np.asarray(groups)
        decide_rho, decide_p = _one_sided_spearman(_demean(oof, g), _demean(z, g))
        within = {"cv_spearman_within_group": decide_rho, "cv_spearman_within_group_p": decide_p,
                  "n_groups": int(np.unique(g).size)}
    mu, sd = _standardize(X)
    coef = _ridge((X - mu) / sd, z - z.mean(), alpha) * ls
    metrics = {"model": "lm_ridge", "n_labels": int(y.size), "n_features": int(X.shape[1]), "alpha": alpha,
               "cv_folds": folds, "cv_spearman": rho, "cv_spearman_p": p,
               "cv_r2": float(1.0 - np.mean((oof - z) ** 2)), "min_spearman": min_spearman, "max_p": max_p,
               **within, "usable": bool(decide_rho > min_spearman and decide_p < max_p), "label_mean": lm,
               "label_std": ls}
    return RidgeInfluenceModel(coef, lm, mu, sd, alpha, metrics, encoder_uri, encoder)
