"""Property-based tests: corpus readers on hostile bytes and values.

Every input gives either a valid (id, domain, text) table or a CorpusError/StorageError that names the
file; never another exception.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from operators.io.corpus import SHARD_SCHEMA, CorpusSpec, ShardRef
from operators.errors import CorpusError, StorageError
from tests.fixtures.readers import read_shard

pytestmark = pytest.mark.timeout(120)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SPEC = CorpusSpec(paths=["unused"])


def _check(tmp_path, name: str, data: bytes, spec: CorpusSpec = SPEC) -> pa.Table | None:
    path = tmp_path / name
    path.write_bytes(data)
    fmt = "parquet" if name.endswith(".parquet") else "jsonl"
    try:
        table = read_shard(ShardRef(uri=str(path), format=fmt, shard_id="s"), spec)
    except (CorpusError, StorageError) as exc:
        assert str(path) in str(exc), f"error does not name the file: {exc}"
        return None
    assert table.schema == SHARD_SCHEMA
    table.validate(full=True)  # valid UTF-8 everywhere
    return table


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


GOOD = _parquet(pa.table({"id": ["a", "b"], "domain": ["web", "code"], "text": ["hello", "world"]}))
GOOD_JSONL = b'{"id": "a", "domain": "web", "text": "hello"}\n{"id": "b", "domain": "code", "text": "x"}\n'
json_values = hs.recursive(
    hs.none() | hs.booleans() | hs.integers() | hs.floats(allow_nan=False) | hs.text(max_size=20),
    lambda inner: hs.lists(inner, max_size=3) | hs.dictionaries(hs.text(max_size=5), inner, max_size=3),
    max_leaves=6)


@FUZZ
@given(data=hs.binary(max_size=2000), suffix=hs.sampled_from([".parquet", ".jsonl", ".jsonl.gz"]))
def test_random_bytes(tmp_path, data, suffix) -> None:
    _check(tmp_path, f"shard{suffix}", data)


@FUZZ
@given(cut=hs.integers(min_value=0, max_value=len(GOOD) - 1))
def test_truncated_parquet(tmp_path, cut) -> None:
    assert _check(tmp_path, "t.parquet", GOOD[:cut]) is None


@FUZZ
@given(cut=hs.integers(min_value=1, max_value=len(gzip.compress(GOOD_JSONL)) - 1))
def test_truncated_gzip(tmp_path, cut) -> None:
    table = _check(tmp_path, "t.jsonl.gz", gzip.compress(GOOD_JSONL)[:cut])
    assert table is None


@FUZZ
@given(line=hs.binary(max_size=200))
def test_invalid_utf8_and_garbage_lines_in_jsonl(tmp_path, line) -> None:
    _check(tmp_path, "u.jsonl", GOOD_JSONL + line + b"\n")


@FUZZ
@given(rows=hs.lists(hs.fixed_dictionaries({"id": json_values, "domain": json_values, "text": json_values}),
                     max_size=4))
def test_wrong_and_null_values_in_jsonl(tmp_path, rows) -> None:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    _check(tmp_path, "v.jsonl", data)


COLUMN_TYPES = {
    "null": lambda n: pa.nulls(n),
    "int": lambda n: pa.array(range(n), pa.int64()),
    "float_nan_inf": lambda n: pa.array([math.nan, math.inf, -math.inf, 1.5][:n] + [0.0] * max(0, n - 4)),
    "binary": lambda n: pa.array([b"\xff\xfe"] * n, pa.binary()),
    "list": lambda n: pa.array([[1, 2]] * n),
    "struct": lambda n: pa.array([{"a": 1}] * n),
    "string_with_null": lambda n: pa.array(["x"] * (n - 1) + [None], pa.string()),
    "empty_string": lambda n: pa.array([""] * n, pa.string()),
    "dictionary": lambda n: pa.array(["web"] * n).dictionary_encode(),
}


@FUZZ
@given(id_t=hs.sampled_from(sorted(COLUMN_TYPES)), domain_t=hs.sampled_from(sorted(COLUMN_TYPES)),
       text_t=hs.sampled_from(sorted(COLUMN_TYPES)), n=hs.integers(min_value=1, max_value=5))
def test_wrong_column_types_in_parquet(tmp_path, id_t, domain_t, text_t, n) -> None:
    table = pa.table({"id": COLUMN_TYPES[id_t](n), "domain": COLUMN_TYPES[domain_t](n),
                      "text": COLUMN_TYPES[text_t](n)})
    _check(tmp_path, "w.parquet", _parquet(table))


def test_integer_overflow_in_jsonl(tmp_path) -> None:
    row = {"id": 2**64, "domain": "web", "text": "t"}  # found by hypothesis: pyarrow raised OverflowError
    assert _check(tmp_path, "o.jsonl", (json.dumps(row) + "\n").encode()) is None


@pytest.mark.parametrize("name", ["e.parquet", "e.jsonl", "e.jsonl.gz"])
def test_empty_files(tmp_path, name) -> None:
    table = _check(tmp_path, name, b"")
    assert table is None or table.num_rows == 0  # an empty JSONL shard is a shard with no rows


def test_empty_gzip_member_is_an_empty_shard(tmp_path) -> None:
    assert _check(tmp_path, "g.jsonl.gz", gzip.compress(b"")).num_rows == 0


def test_missing_column_names_file_and_field(tmp_path) -> None:
    with pytest.raises(CorpusError, match=r"m\.parquet: missing column 'text'"):
        path = tmp_path / "m.parquet"
        path.write_bytes(_parquet(pa.table({"id": ["a"], "domain": ["web"]})))
        read_shard(ShardRef(uri=str(path), format="parquet", shard_id="s"), SPEC)


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_ten_megabyte_document(tmp_path, suffix) -> None:
    big = ("influence " * 1_100_000)[:10_000_000]
    row = {"id": "big", "domain": "web", "text": big}
    data = _parquet(pa.Table.from_pylist([row])) if suffix == ".parquet" else (json.dumps(row) + "\n").encode()
    table = _check(tmp_path, f"big{suffix}", data)
    assert table is not None and len(table.column("text")[0].as_py()) == 10_000_000


def test_ten_megabyte_document_tokenizes_truncated(tmp_path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from operators.model.tokenize import prepare_tokenizer, tokenize_texts

    vocab = {"[UNK]": 0, "[PAD]": 1, "influence": 2, "a": 3}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = prepare_tokenizer(PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]"))
    t0 = time.monotonic()
    out = tokenize_texts(tok, ["influence " * 1_000_000, "a"], 128)
    assert time.monotonic() - t0 < 60
    assert out.input_ids.shape == (2, 128) and out.lengths.tolist() == [128, 1]
