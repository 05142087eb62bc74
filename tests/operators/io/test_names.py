"""Safe names and ids: hostile domain values and ids from the data are refused, naming shard and value."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from operators.io import names, storage
from operators.io.corpus import CorpusSpec, ShardRef
from operators.errors import CorpusError
from tests.fixtures.readers import read_shard

HOSTILE = ["../../../../../x", "/abs/x", "..", ".", ".hidden", "a b", "a\nb", "web/en", "", "a\tb",
           "x" * 129, "c:\\win", "naïve", "-flag", "a\u2028b"]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_domain_is_refused_naming_shard_and_value(tmp_path, value) -> None:
    path = tmp_path / "shard-0000.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "domain": ["web", value], "text": ["t1", "t2"]}), path)
    shard = ShardRef(uri=str(path), format="parquet", shard_id="s")
    with pytest.raises(CorpusError) as err:
        read_shard(shard, CorpusSpec(paths=[str(tmp_path)]))
    assert str(path) in str(err.value) and repr(value) in str(err.value) and "'domain'" in str(err.value)


def test_domain_from_path_result_is_checked(tmp_path) -> None:
    path = tmp_path / "bad name" / "x.jsonl"
    path.parent.mkdir()
    path.write_text('{"text": "hello"}\n')
    spec = CorpusSpec(paths=[str(tmp_path)], id_column=None, domain_column=None,
                      domain_from_path={r"/([^/]+)/x\.jsonl$": r"\1"})
    with pytest.raises(CorpusError, match="domain 'bad name' is not a safe name"):
        read_shard(ShardRef(uri=str(path), format="jsonl", shard_id="s"), spec)


@pytest.mark.parametrize("bad", ["", "a\nb", "a\rb", "a\x00b", "a\u2029b", "x" * 5000])
def test_bad_ids_are_refused_naming_row(tmp_path, bad) -> None:
    path = tmp_path / "s.jsonl"
    rows = [{"id": "ok", "domain": "web", "text": "t"}, {"id": bad, "domain": "web", "text": "t"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(CorpusError, match=r"s\.jsonl: column 'id' row 1"):
        read_shard(ShardRef(uri=str(path), format="jsonl", shard_id="s"), CorpusSpec(paths=[str(path)]))


@settings(max_examples=200, deadline=None)
@given(hs.text(max_size=40))
def test_safe_names_never_leave_their_directory(name) -> None:
    root = "/srv/out/manifests/run"
    if not names.is_safe_name(name):
        with pytest.raises(ValueError, match="not a safe name"):
            names.path_component(name, "domain")
        return
    joined = os.path.normpath(storage.join(root, "selection", f"{names.path_component(name)}.txt"))
    assert joined.startswith(root + "/selection/") and joined.count("/") == root.count("/") + 2
    assert not any(c.isspace() for c in name) and ":" not in name


def test_config_names_use_the_safe_alphabet() -> None:
    from workflows.config import validate_config

    base = {"output_uri": "/tmp/o", "corpus": {"paths": ["/tmp/c"]}, "targets": [{"name": "t", "paths": ["/x"]}]}
    for field, value in (("name", ".."), ("run_id", "../../x"), ("run_id", "a/b")):
        with pytest.raises(Exception, match=field):
            validate_config({**base, field: value})
    with pytest.raises(Exception, match="targets.0.name"):
        validate_config({**base, "targets": [{"name": "..", "paths": ["/x"]}]})
