"""Tests for operators.selection.influence_ridge (ridge on frozen LM features; CV Spearman; usable flag)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from operators.errors import ModelError
from operators.selection.influence_model import TrainedInfluenceModel, load_influence_model
from operators.selection.influence_ridge import RidgeInfluenceModel, fit_ridge_influence, lm_features
from operators.model.tiny_lm import TinyLMSpec, build_tiny_lm
from transformers import PreTrainedTokenizerFast
from workflows.assets import default_tokenizer_dir

VOCAB = 48


@pytest.fixture(scope="module")
def lm() -> torch.nn.Module:
    return build_tiny_lm(TinyLMSpec(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                                    max_length=32), VOCAB, 0, 1, 2).eval()


def _tokens(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    ids = torch.from_numpy(rng.integers(3, VOCAB, (n, 20)))
    lengths = rng.integers(4, 21, n)
    mask = torch.from_numpy((np.arange(20)[None] < lengths[:, None]).astype(np.int64))
    return torch.where(mask.bool(), ids, 0), mask


def test_lm_features_shape_and_padding_invariance(lm) -> None:
    ids, mask = _tokens(6, 0)
    X = lm_features(lm, ids, mask, batch_size=4)
    assert X.shape == (6, 2 * 16 + 2) and np.all(np.isfinite(X))
    wider = torch.nn.functional.pad(ids, (0, 5)), torch.nn.functional.pad(mask, (0, 5))
    np.testing.assert_allclose(lm_features(lm, *wider), X, atol=1e-4)
    np.testing.assert_allclose(X[:, -1], np.log(mask.sum(1).numpy()), atol=1e-6)


def test_signal_is_usable_and_noise_is_not() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 30))
    signal = X[:, 0] - 0.5 * X[:, 3] + 0.5 * rng.normal(size=200)
    good = fit_ridge_influence(X, signal, "uri", folds=5, seed=0)
    assert good.usable and good.metrics["cv_spearman"] > 0.7 and good.metrics["cv_spearman_p"] < 1e-6
    pred = good.predict_features(X)
    assert np.corrcoef(pred, signal)[0, 1] > 0.8 and abs(pred.mean() - signal.mean()) < 0.1
    flags = [fit_ridge_influence(X, np.random.default_rng(s).normal(size=200), "uri").usable for s in range(10)]
    assert not any(flags)


def test_bytes_roundtrip_with_given_encoder(lm) -> None:
    ids, mask = _tokens(40, 2)
    X = lm_features(lm, ids, mask)
    model = fit_ridge_influence(X, X[:, -2] + 0.01 * np.arange(40) % 3, "unused://uri", encoder=lm)
    data = model.to_bytes()
    back = load_influence_model(data, encoder=lm)
    assert isinstance(back, RidgeInfluenceModel) and back.metrics == model.metrics
    np.testing.assert_allclose(back.predict(ids, mask), model.predict(ids, mask))
    with pytest.raises(ModelError, match="encoder"):
        RidgeInfluenceModel(model.coef, 0.0, model.mu, model.sd, 1.0, {}, "u").predict(ids, mask)


def test_trained_influence_model_loader_reads_ridge_bytes(lm, tmp_path) -> None:
    lm.save_pretrained(tmp_path)  # the scorer loads the encoder from the stored uri
    PreTrainedTokenizerFast.from_pretrained(default_tokenizer_dir()).save_pretrained(tmp_path)
    ids, mask = _tokens(20, 3)
    X = lm_features(lm, ids, mask)
    model = fit_ridge_influence(X, X[:, -1], str(tmp_path), folds=2)
    back = TrainedInfluenceModel.from_bytes(model.to_bytes())
    np.testing.assert_allclose(back.predict(ids, mask), model.predict_features(X), atol=1e-6)


def test_domain_offsets_alone_are_not_usable_for_selection_within_quotas() -> None:
    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(5), 40)
    X = np.column_stack([groups == g for g in range(5)] + [rng.normal(size=(200, 10))]).astype(float)
    labels = groups * 1.0 + 0.1 * rng.normal(size=200)  # only the domain predicts the label
    model = fit_ridge_influence(X, labels, "uri", groups=groups)
    assert model.metrics["cv_spearman"] > 0.9  # across domains: easy
    assert not model.usable and model.metrics["cv_spearman_within_group"] < 0.2
    within = labels + 0.5 * X[:, 5]  # a within-domain signal in a feature
    assert fit_ridge_influence(X, within, "uri", groups=groups).usable
