"""Shipped default assets: corpus/targets/tokenizer integrity and the cached default checkpoint."""

from __future__ import annotations

import json
import multiprocessing as mp
import random
import shutil
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from transformers import PreTrainedTokenizerFast

from operators.errors import CorpusError
from operators.model.tiny_lm import TinyLMSpec
from workflows import assets
from workflows.assets import build_corpus as bc

pytestmark = pytest.mark.timeout(180)


def _domains() -> list[str]:
    """Domains of the shipped corpus, from its shard names (``<domain>-<nnnn>.parquet``)."""
    return sorted({p.name.rsplit("-", 1)[0] for p in Path(assets.default_corpus_dir()).glob("*.parquet")})


FAST = TinyLMSpec(hidden_size=32, intermediate_size=64, max_length=32, warmup_steps=4, batch_size=4)


def _rows(path: str | Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


@pytest.fixture(scope="module")
def corpus() -> dict[str, list[dict]]:
    shards: dict[str, list[dict]] = {}
    for p in sorted(Path(assets.default_corpus_dir()).glob("*.parquet")):
        shards[p.name] = _rows(p)
    return shards


def test_checksums_verify_and_detect_tampering(tmp_path, monkeypatch) -> None:
    assets.verify_checksums()
    listed = json.loads((assets.DATA_DIR / "CHECKSUMS.json").read_text())["files"]
    # data/scenarios/ (harder-testbed data) has its own CHECKSUMS.json, checked below
    default_files = [p for p in assets.DATA_DIR.rglob("*")
                     if p.is_file() and p.relative_to(assets.DATA_DIR).parts[0] != "scenarios"]
    on_disk = {p.relative_to(assets.DATA_DIR).as_posix() for p in default_files}
    assert on_disk - set(listed) == {"CHECKSUMS.json"}
    total = sum(p.stat().st_size for p in assets.DATA_DIR.rglob("*") if p.is_file())
    assert total < 3_000_000

    copy = tmp_path / "data"
    shutil.copytree(assets.DATA_DIR, copy)
    monkeypatch.setattr(assets, "DATA_DIR", copy)
    assets.verify_checksums()
    victim = copy / "targets" / "val_code.parquet"
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    with pytest.raises(CorpusError, match="val_code.parquet"):
        assets.verify_checksums()
    victim.unlink()
    with pytest.raises(CorpusError, match="missing"):
        assets.verify_checksums()


def test_corpus_has_real_multi_domain_shards(corpus) -> None:
    domains = _domains()
    assert len(domains) >= 4 and {"code", "docs", "legal"} <= set(domains)
    for domain in domains:
        shards = [name for name in corpus if name.rsplit("-", 1)[0] == domain]
        assert len(shards) >= 2, domain
        rows = [r for name in shards for r in corpus[name]]
        assert len(rows) >= 300
        assert all(r["domain"] == domain and r["id"].startswith(f"{domain}-") for r in rows)
        assert all(bc.MIN_CHARS <= len(r["text"]) <= bc.HARD_MAX for r in rows)
        assert all(r["text"] == r["text"].strip("\n") and "\t" not in r["text"] for r in rows)
        assert all(line == line.rstrip() for r in rows for line in r["text"].split("\n"))
    schema = pq.read_schema(next(Path(assets.default_corpus_dir()).glob("*.parquet")))
    assert {"id", "domain", "text"} <= set(schema.names)
    # the code domain really is Python source
    code = [r["text"] for name, rows in corpus.items() if name.startswith("code-") for r in rows]
    assert sum(("def " in t or "import " in t or "return" in t) for t in code) > len(code) // 2


def test_ids_unique_and_targets_disjoint(corpus) -> None:
    train = [r for rows in corpus.values() for r in rows]
    targets = {name: _rows(path) for name, path in assets.default_targets().items()}
    assert {f"val_{d}" for d in _domains()} | {"target_mixed"} == set(targets)
    all_ids = [r["id"] for r in train] + [r["id"] for rows in targets.values() for r in rows]
    assert len(all_ids) == len(set(all_ids))
    train_texts = {" ".join(r["text"].lower().split()) for r in train}
    for name, rows in targets.items():
        assert rows and all(" ".join(r["text"].lower().split()) not in train_texts for r in rows), name
    for d in _domains():
        assert len(targets[f"val_{d}"]) == bc.N_VAL and {r["domain"] for r in targets[f"val_{d}"]} == {d}
    mixed_domains = [r["domain"] for r in targets["target_mixed"]]
    assert {d: mixed_domains.count(d) for d in set(mixed_domains)} == bc.TARGET_MIX
    val_ids = {r["id"] for d in _domains() for r in targets[f"val_{d}"]}
    assert val_ids.isdisjoint(r["id"] for r in targets["target_mixed"])


def test_tokenizer_loads_locally_and_roundtrips(corpus) -> None:
    tok = PreTrainedTokenizerFast.from_pretrained(assets.default_tokenizer_dir())
    assert len(tok) == bc.VOCAB_SIZE
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|bos|>", "<|eos|>", "<|pad|>")
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    samples = [rows[0]["text"] for rows in corpus.values()] + ["Ünïcode — emoji 🙂 and tabs\tend"]
    for text in samples:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text
    # merges are learnt from the corpus: real text compresses well below one token per byte
    text = "\n".join(samples[:-1])
    assert len(tok(text)["input_ids"]) < 0.6 * len(text.encode())


def test_chunking_and_selection_helpers() -> None:
    assert bc.normalise("a\tb  \r\n\n\n\nmail me@example.org  ") == "a   b\n\nmail <email>"
    long_block = "\n".join(f"long line {i:03d} of one block" for i in range(150))  # ~3.8k chars
    blocks = ["alpha beta gamma " * 9, "delta epsilon zeta " * 8, long_block, "short"]
    chunks = bc.chunk_blocks(blocks)
    assert all(bc.MIN_CHARS <= len(c) <= bc.HARD_MAX for c in chunks)
    assert sum(c.count("long line") for c in chunks) == 150  # long blocks are split, not dropped
    assert any("alpha" in c and "delta" in c for c in chunks)  # short neighbours are merged
    assert bc.chunk_blocks(["x" * 500]) == [] and bc.chunk_blocks(["near-empty", "  "]) == []
    items = [bc.Chunk(f"f{i % 7}", f"text number {i} " * 20) for i in range(200)]
    picked = bc.select("demo", items, 30)
    shuffled = items[:]
    random.Random(1).shuffle(shuffled)
    assert bc.select("demo", shuffled, 30) == picked  # independent of input order
    assert max(sum(c.source == f"f{i}" for c in picked) for i in range(7)) <= bc.PER_SOURCE_CAP


def _ensure_in_child(cache: str, queue) -> None:  # module level: picklable for spawn
    from workflows import assets as child_assets

    path = child_assets.ensure_default_checkpoint(cache, FAST.model_copy(update={"seed": 7}))
    queue.put((path, child_assets._BUILD_COUNT))


def test_default_checkpoint_is_cached_and_loadable(tmp_path) -> None:
    from operators.model.loading import load_adam_moments, load_causal_lm

    before = assets._BUILD_COUNT
    path = assets.ensure_default_checkpoint(str(tmp_path), FAST)
    assert assets._BUILD_COUNT == before + 1
    weights = Path(path) / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert assets.ensure_default_checkpoint(str(tmp_path), FAST) == path
    assert assets._BUILD_COUNT == before + 1 and weights.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and p.is_dir()] == []

    loaded = load_causal_lm(path)
    meta = loaded.meta
    assert meta["loss_after"] < meta["loss_before"] and loaded.step == FAST.warmup_steps
    assert meta["spec"] == FAST.model_dump(mode="json")
    assert meta["tokenizer_sha256"] == json.loads((assets.DATA_DIR / "CHECKSUMS.json").read_text())[
        "files"]["tokenizer/tokenizer.json"]
    assert loaded.tokenizer.model_max_length == FAST.max_length
    assert load_adam_moments(path)["step"] == FAST.warmup_steps
    other = assets.ensure_default_checkpoint(str(tmp_path), FAST.model_copy(update={"lr": 1e-3}))
    assert other != path and assets._BUILD_COUNT == before + 2


@pytest.mark.slow
def test_default_checkpoint_concurrent_threads_and_processes(tmp_path) -> None:
    spec = FAST.model_copy(update={"seed": 5})
    before = assets._BUILD_COUNT
    results: list[str] = []
    barrier = threading.Barrier(3)

    def call() -> None:
        barrier.wait()
        results.append(assets.ensure_default_checkpoint(str(tmp_path / "threads"), spec))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(set(results)) == 1
    assert assets._BUILD_COUNT == before + 1
    assert (Path(results[0]) / "config.json").is_file()

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ensure_in_child, args=(str(tmp_path / "procs"), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=150) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert got[0][0] == got[1][0] and Path(got[0][0]).is_dir()
    assert sum(count for _, count in got) == 1  # the file lock let exactly one process build
    leftovers = [p.name for p in (tmp_path / "procs").iterdir() if p.is_dir() and p.name.startswith(".")]
    assert leftovers == []
