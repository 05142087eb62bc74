"""Tokenisation, right padding, validity mask and length-sorted batching (tiny local tokenizer)."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from operators.errors import ModelError
from operators.model.tokenize import iter_token_batches, prepare_tokenizer, tokenize_texts

pytestmark = pytest.mark.timeout(60)

WORDS = "the cat sat on a mat dog ran far away".split()


def _tokenizer(eos: bool = True) -> PreTrainedTokenizerFast:
    vocab = {"[UNK]": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    kwargs = {"eos_token": "</s>"} if eos else {}
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", **kwargs)
    tok.padding_side = "left"  # prepare_tokenizer must switch this
    return tok


TEXTS = ["the cat sat on a mat", "dog", "a dog ran far away", "cat sat", "the"]


def test_prepare_tokenizer_sets_pad_and_side() -> None:
    tok = prepare_tokenizer(_tokenizer())
    assert tok.pad_token == tok.eos_token == "</s>"
    assert tok.padding_side == "right"
    with pytest.raises(ModelError, match="pad"):
        prepare_tokenizer(_tokenizer(eos=False))


def test_tokenize_texts_right_padding_and_valid() -> None:
    tok = prepare_tokenizer(_tokenizer())
    batch = tokenize_texts(tok, TEXTS, max_length=5)
    expected = [[2 + WORDS.index(w) for w in t.split()][:5] for t in TEXTS]
    width = max(len(e) for e in expected)
    assert batch.input_ids.shape == (len(TEXTS), width) and batch.input_ids.dtype == torch.long
    assert batch.lengths.tolist() == [len(e) for e in expected]
    assert batch.attention_mask.sum(1).tolist() == batch.lengths.tolist()
    for i, row in enumerate(expected):
        assert batch.input_ids[i, : len(row)].tolist() == row  # tokens first (right padding)
        assert batch.attention_mask[i, : len(row)].all()
        assert not batch.attention_mask[i, len(row):].any()
        assert (batch.input_ids[i, len(row):] == tok.pad_token_id).all()
    assert batch.valid.tolist() == [len(e) >= 2 for e in expected]
    short = tokenize_texts(tok, ["dog", "cat"], max_length=8)
    assert short.input_ids.shape == (2, 1) and not short.valid.any()
    empty = tokenize_texts(tok, [], max_length=8)
    assert len(empty) == 0 and empty.input_ids.shape == (0, 0)


def test_iter_token_batches_sorted_trimmed_deterministic() -> None:
    tok = prepare_tokenizer(_tokenizer())
    texts = TEXTS * 3
    ids = [f"id{i}" for i in range(len(texts))]
    domains = [f"d{i % 2}" for i in range(len(texts))]
    tb = tokenize_texts(tok, texts, max_length=8)
    batches = list(iter_token_batches(ids, domains, tb, batch_size=4))
    again = list(iter_token_batches(ids, domains, tb, batch_size=4))
    assert [b.ids for b in batches] == [b.ids for b in again]
    seen = [i for b in batches for i in b.ids]
    valid_ids = [ids[i] for i in range(len(ids)) if tb.valid[i]]
    assert sorted(seen) == sorted(valid_ids) and len(seen) == len(set(seen))
    lengths = [int(m.sum()) for b in batches for m in b.attention_mask]
    assert lengths == sorted(lengths, reverse=True)
    for b in batches:
        assert len(b.ids) <= 4 and len(b.domains) == len(b.ids)
        assert b.input_ids.shape[1] == int(b.attention_mask.sum(1).max())  # trimmed
        for row, rid in enumerate(b.ids):
            k = ids.index(rid)
            assert b.domains[row] == domains[k]
            n = int(tb.lengths[k])
            assert b.input_ids[row, :n].tolist() == tb.input_ids[k, :n].tolist()
    unsorted = list(iter_token_batches(ids, domains, tb, batch_size=4, sort_by_length=False))
    assert [i for b in unsorted for i in b.ids] == valid_ids


def test_untruncated_lengths_and_identical_truncated_ids() -> None:
    tok = prepare_tokenizer(_tokenizer())
    plain = tokenize_texts(tok, TEXTS, max_length=3)
    counted = tokenize_texts(tok, TEXTS, max_length=3, count_untruncated=True)
    assert plain.full_lengths is None
    assert counted.full_lengths.tolist() == [6, 1, 5, 2, 1]
    assert torch.equal(plain.input_ids, counted.input_ids) and torch.equal(plain.lengths, counted.lengths)
    assert tokenize_texts(tok, [], 3, count_untruncated=True).full_lengths.tolist() == []


def test_huge_text_goes_through_a_prefix_with_identical_ids(monkeypatch) -> None:
    """A text past the prefix limit is encoded through its prefix: the truncated ids are the full
    text's, the untruncated count is extrapolated by characters (here exact: a repeating text), and a
    text whose prefix is too short in tokens falls back to the whole text."""
    import operators.model.tokenize as tz

    monkeypatch.setattr(tz, "PREFIX_CHARS", 200)
    tok = prepare_tokenizer(_tokenizer())
    text = "the cat sat on a mat " * 100  # 2,100 characters, 600 words
    seen: list[int] = []
    real = tz._encode

    def spy(t, texts, *args):
        seen.extend(len(x) for x in texts)
        return real(t, texts, *args)

    monkeypatch.setattr(tz, "_encode", spy)
    got = tokenize_texts(tok, [text, "dog ran"], max_length=3, count_untruncated=True)
    assert max(seen) <= 200  # the long text was never encoded whole
    monkeypatch.setattr(tz, "_encode", real)
    monkeypatch.setattr(tz, "PREFIX_CHARS", 1 << 20)
    ref = tokenize_texts(tok, [text, "dog ran"], max_length=3, count_untruncated=True)
    assert torch.equal(got.input_ids, ref.input_ids) and ref.full_lengths.tolist() == [600, 2]
    assert abs(int(got.full_lengths[0]) - 600) <= 600 * 0.02 and int(got.full_lengths[1]) == 2
    plain = tokenize_texts(tok, [text], max_length=3)
    assert torch.equal(plain.input_ids, ref.input_ids[:1, : plain.input_ids.shape[1]])
    # unknown words are single tokens of any length: a prefix of 200 characters holds < 3 + slack tokens
    monkeypatch.setattr(tz, "PREFIX_CHARS", 200)
    odd = ("x" * 150 + " ") * 20
    assert tokenize_texts(tok, [odd], max_length=3, count_untruncated=True).full_lengths.tolist() == [20]
