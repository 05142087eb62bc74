"""Tests for operators.selection.influence_model (MATES data influence model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from operators.errors import CorpusError, ModelError
from operators.selection.influence_model import (
    DataInfluenceModel,
    InfluenceModelSpec,
    TrainedInfluenceModel,
    train_influence_model,
)

VOCAB = 64
PAD = 0


def synthetic(
    n: int, seed: int, length: int = 24
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Token sequences whose label is the fraction of valid tokens below VOCAB/2, plus noise."""
    rng = np.random.default_rng(seed)
    p_low = rng.uniform(0.05, 0.95, size=n)
    low = rng.random((n, length)) < p_low[:, None]
    low_tok = rng.integers(1, VOCAB // 2, (n, length))
    ids = np.where(low, low_tok, rng.integers(VOCAB // 2, VOCAB, (n, length)))
    lengths = rng.integers(length // 2, length + 1, size=n)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, ids, PAD)
    frac = (low & (mask == 1)).sum(1) / mask.sum(1)
    labels = 3.0 * frac + 0.5 + rng.normal(0, 0.05, size=n)
    return torch.from_numpy(ids).long(), torch.from_numpy(mask), labels


SPEC = InfluenceModelSpec(
    hidden_size=32, num_layers=1, num_heads=4, max_length=16, epochs=12, batch_size=32, seed=3
)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    return synthetic(400, seed=0)


@pytest.fixture(scope="module")
def trained(data) -> TrainedInfluenceModel:
    return train_influence_model(SPEC, *data, vocab_size=VOCAB, pad_token_id=PAD)


@pytest.mark.slow
def test_learns_a_token_function(data, trained) -> None:
    m = trained.metrics
    assert m["val_spearman"] > 0.7
    assert m["n_train"] + m["n_val"] == 400 and m["n_val"] == 40
    assert m["label_mean"] == pytest.approx(trained.label_mean)
    assert {"val_pearson", "val_mse", "label_std"} <= m.keys()
    # Fresh data: predictions are in label units and rank-correlate with the truth.
    ids, mask, labels = synthetic(120, seed=99)
    pred = trained.predict(ids, mask, batch_size=50)
    assert pred.shape == (120,) and pred.dtype == np.float64
    assert spearmanr(pred, labels)[0] > 0.7
    assert abs(pred.mean() - labels.mean()) < 0.5 * labels.std()


@pytest.mark.slow
def test_reported_val_spearman_belongs_to_restored_weights(data, trained) -> None:
    ids, mask, labels = data
    n = len(labels)
    perm = np.random.default_rng(SPEC.seed).permutation(n)
    val = np.sort(perm[: trained.metrics["n_val"]])
    pred = trained.predict(ids[val], mask[val])
    assert spearmanr(pred, labels[val])[0] == pytest.approx(trained.metrics["val_spearman"], abs=1e-6)


@pytest.mark.slow
def test_bytes_roundtrip_gives_identical_predictions(data, trained) -> None:
    ids, mask, _ = data
    blob = trained.to_bytes()
    loaded = TrainedInfluenceModel.from_bytes(blob)
    assert np.array_equal(loaded.predict(ids[:64], mask[:64]), trained.predict(ids[:64], mask[:64]))
    assert loaded.metrics == trained.metrics and loaded.spec == trained.spec
    with pytest.raises(ModelError):
        TrainedInfluenceModel.from_bytes(blob[: len(blob) // 2])


def test_training_is_deterministic_and_leaves_global_rng_alone() -> None:
    ids, mask, labels = synthetic(80, seed=5)
    spec = SPEC.model_copy(update={"epochs": 2})
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    a = train_influence_model(spec, ids, mask, labels, VOCAB, PAD)
    assert torch.equal(torch.rand(3), expected_draw)
    b = train_influence_model(spec, ids, mask, labels, VOCAB, PAD)
    assert np.array_equal(a.predict(ids, mask), b.predict(ids, mask))
    assert a.metrics == b.metrics
    c = train_influence_model(spec.model_copy(update={"seed": 4}), ids, mask, labels, VOCAB, PAD)
    assert not np.array_equal(a.predict(ids, mask), c.predict(ids, mask))


def test_long_sequences_are_windowed_and_padding_is_ignored() -> None:
    torch.manual_seed(0)
    model = DataInfluenceModel(SPEC, VOCAB, PAD).eval()
    ids = torch.randint(1, VOCAB, (2, 40))  # 40 tokens > max_length 16 → 3 windows
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    with torch.no_grad():
        out = model(ids, mask)
        # Extra padding (including fully padded windows) and garbage under the mask change nothing.
        ids_garbage = ids.clone()
        ids_garbage[1, 20:] = 7
        padded = model(torch.cat([ids_garbage, torch.zeros(2, 30, dtype=torch.long)], 1),
                       torch.cat([mask, torch.zeros(2, 30, dtype=torch.long)], 1))
    assert out.shape == (2,) and torch.isfinite(out).all()
    assert torch.allclose(out, padded, atol=1e-5)


def test_bad_inputs_raise() -> None:
    ids, mask, labels = synthetic(10, seed=1)
    with pytest.raises(CorpusError):
        train_influence_model(SPEC, ids, mask, labels[:5], VOCAB, PAD)
    with pytest.raises(CorpusError):
        train_influence_model(SPEC, ids, mask, np.full(10, np.nan), VOCAB, PAD)
    with pytest.raises(CorpusError):
        train_influence_model(SPEC, ids + VOCAB, mask, labels, VOCAB, PAD)
