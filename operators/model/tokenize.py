"""Tokenisation of corpus texts into right-padded, length-sorted batches for a causal LM."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from operators.errors import ConfigError, ModelError


@dataclass(frozen=True)
class TokenizedBatch:
    """Right-padded token ids for ``n`` texts (``T`` = longest length, at most ``max_length``)."""

    input_ids: torch.Tensor  # (n, T) int64
    attention_mask: torch.Tensor  # (n, T) int64, 1 on real tokens
    lengths: torch.Tensor  # (n,) int64
    valid: torch.Tensor  # (n,) bool: at least 2 tokens, so one next-token target exists
    full_lengths: torch.Tensor | None = None  # (n,) int64 lengths without truncation (if asked)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


class TokenBatch(NamedTuple):
    """One model batch: ids/domains of its rows and the trimmed token tensors."""

    ids: list[str]
    domains: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Ensure a pad token (the EOS token if none) and right padding; returns the tokenizer."""
    if getattr(tokenizer, "pad_token", None) is None:
        eos = getattr(tokenizer, "eos_token", None)
        if eos is None:
            raise ModelError(
                f"tokenizer {type(tokenizer).__name__} has neither a pad nor an eos token"
            )
        tokenizer.pad_token = eos
    tokenizer.padding_side = "right"
    return tokenizer


def _pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0


def _encode(tokenizer: Any, texts: list[str], add_special_tokens: bool, max_length: int | None) -> list:
    try:
        return tokenizer(
            list(texts),
            truncation=max_length is not None,
            max_length=max_length,
            padding=False,
            add_special_tokens=add_special_tokens,
            verbose=False,
        )["input_ids"]
    except Exception as exc:  # tokenizers raise a variety of types
        raise ModelError(f"tokenizer {type(tokenizer).__name__} failed: {exc}") from exc


#: Texts longer than this many characters (or 64 per token of ``max_length``, if more) are tokenized
#: through a prefix: a 10 MB document costs what its first 64k characters cost.
PREFIX_CHARS = 1 << 16
#: A prefix must give this many tokens beyond ``max_length`` for its truncation to equal the full
#: text's (the word cut at the prefix's end can only change the last tokens).
PREFIX_SLACK = 16


def tokenize_texts(
    tokenizer: Any,
    texts: list[str],
    max_length: int,
    add_special_tokens: bool = True,
    count_untruncated: bool = False,
) -> TokenizedBatch:
    """Tokenise ``texts`` (truncated to ``max_length`` tokens) and right-pad to the longest.

    With ``count_untruncated`` the texts are encoded without truncation first (``full_lengths``);
    only rows longer than ``max_length`` are encoded again with the tokenizer's own truncation.

    A text longer than the prefix limit (``max(PREFIX_CHARS, 64 × max_length)`` characters) is encoded
    through its prefix. When the prefix alone gives at least ``max_length + PREFIX_SLACK`` tokens its
    truncated ids are the full text's, and its untruncated length is extrapolated by characters
    (``prefix tokens × len(text) / len(prefix)``); otherwise the whole text is encoded.
    """
    if max_length < 1:
        raise ConfigError(f"max_length must be >= 1, got {max_length}")
    n = len(texts)
    if n == 0:
        empty = torch.zeros((0, 0), dtype=torch.long)
        zeros = torch.zeros(0, dtype=torch.long)
        full = zeros.clone() if count_untruncated else None
        return TokenizedBatch(empty, empty.clone(), zeros, zeros.bool(), full)
    limit = max(PREFIX_CHARS, 64 * max_length)
    huge = {i for i, t in enumerate(texts) if len(t) > limit}
    source = list(texts)  # what each row's truncated ids are encoded from
    full: list[float] = [0.0] * n
    encoded: list[Any] = [None] * n
    probe = list(range(n)) if count_untruncated else sorted(huge)
    if probe:  # untruncated encodings: counts, and whether a huge row's prefix suffices
        heads = [texts[i][:limit] for i in probe]
        unknown = []
        for i, head, row in zip(probe, heads, _encode(tokenizer, heads, add_special_tokens, None)):
            if i not in huge:
                full[i] = float(len(row))
                if len(row) <= max_length:
                    encoded[i] = row  # already final
            elif len(row) >= max_length + PREFIX_SLACK:
                source[i] = head
                full[i] = len(row) * len(texts[i]) / len(head)
            else:  # tokens longer than 64 characters on average: no shortcut
                unknown.append(i)
        if count_untruncated and unknown:
            for i, row in zip(unknown, _encode(tokenizer, [texts[i] for i in unknown], add_special_tokens, None)):
                full[i] = float(len(row))
    rest = [i for i in range(n) if encoded[i] is None]
    if rest:
        for i, row in zip(rest, _encode(tokenizer, [source[i] for i in rest], add_special_tokens, max_length)):
            encoded[i] = row
    full_lengths = torch.tensor([round(f) for f in full], dtype=torch.int64) if count_untruncated else None
    lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=n)
    width = int(lengths.max()) if n else 0
    ids = np.full((n, width), _pad_id(tokenizer), dtype=np.int64)
    mask = np.zeros((n, width), dtype=np.int64)
    for i, row in enumerate(encoded):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    lengths_t = torch.from_numpy(lengths)
    return TokenizedBatch(
        input_ids=torch.from_numpy(ids),
        attention_mask=torch.from_numpy(mask),
        lengths=lengths_t,
        valid=lengths_t >= 2,
        full_lengths=full_lengths,
    )


def iter_token_batches(
    ids: list[str],
    domains: list[str],
    tokenized: TokenizedBatch,
    batch_size: int,
    sort_by_length: bool = True,
) -> Iterator[TokenBatch]:
    """Yield batches of valid rows, trimmed to each batch's longest row.

    With ``sort_by_length`` rows go longest first (stable, so ties keep input order), which
    minimises padding and surfaces out-of-memory batches early; the order is deterministic.
    """
    n = len(tokenized)
    if len(ids) != n or len(domains) != n:
        raise ConfigError(
            f"iter_token_batches: {len(ids)} ids and {len(domains)} domains for {n} tokenised rows"
        )
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    lengths = tokenized.lengths.numpy()
    rows = np.flatnonzero(tokenized.valid.numpy())
    if sort_by_length:
        rows = rows[np.argsort(-lengths[rows], kind="stable")]
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = int(lengths[chunk].max())
        index = torch.from_numpy(chunk)
        yield TokenBatch(
            ids=[ids[i] for i in chunk],
            domains=[domains[i] for i in chunk],
            input_ids=tokenized.input_ids[index, :width],
            attention_mask=tokenized.attention_mask[index, :width],
        )
