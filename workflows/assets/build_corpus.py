"""Regenerate the shipped multi-domain corpus, target sets and tokenizer under ``data/``.

Developer script: ``python -m workflows.assets.build_corpus [--out DIR]``.  It reads real text that
a Debian machine with CPython installed already holds (stdlib sources, licence texts, Debian
changelogs and copyright files, packaged example configs), chunks it, selects examples with a stable
hash, and writes Parquet shards, held-out target sets, a byte-level BPE tokenizer, ``SOURCES.md``
and ``CHECKSUMS.json``.  Selection and ordering depend only on file contents and the seed.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import json
import re
import shutil
import sys
import sysconfig
import textwrap
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from workflows.assets import sha256_file

SEED = 0
N_TRAIN = 600
N_VAL = 64
N_SHARDS = 3
TARGET_MIX = {"docs": 50, "code": 30, "legal": 20}
MIN_CHARS, SOFT_MAX, HARD_MAX = 200, 900, 1200
PER_SOURCE_CAP = 8
VOCAB_SIZE = 512
SPECIAL_TOKENS = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>"}
DEFAULT_OUT = Path(__file__).resolve().parent / "data"

_EMAIL = re.compile(r"<?[\w.+-]+@[\w-]+(?:\.[\w-]+)+>?")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_CHANGELOG_HEAD = re.compile(r"^\S+ \([^)]*\) [^;]*; ?urgency=", re.MULTILINE)
_STDLIB_SKIP = {"site-packages", "test", "tests", "lib-dynload", "__pycache__", "idle_test"}


@dataclass(frozen=True)
class Chunk:
    """One candidate example: its text and the file it came from (relative, for provenance)."""

    source: str
    text: str


# ---------------------------------------------------------------- normalisation and chunking


def normalise(text: str, prose: bool = False) -> str:
    """NFC, tabs to spaces, control chars and e-mail addresses removed, trailing blanks trimmed."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text.expandtabs(4))
    text = _EMAIL.sub("<email>", text)
    lines = [ln.rstrip() for ln in text.split("\n")]
    if prose:
        lines = [re.sub(r" {2,}", " ", ln.strip()) for ln in lines]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _split_long(block: str) -> Iterator[str]:
    """Split a block longer than HARD_MAX at line boundaries (hard-cut over-long lines)."""
    cur = ""
    for line in block.split("\n"):
        while len(line) > HARD_MAX:
            if cur:
                yield cur
                cur = ""
            yield line[:HARD_MAX]
            line = line[HARD_MAX:]
        if cur and len(cur) + 1 + len(line) > SOFT_MAX:
            yield cur
            cur = line
        else:
            cur = f"{cur}\n{line}" if cur else line
    if cur:
        yield cur


def chunk_blocks(blocks: Iterable[str]) -> list[str]:
    """Greedily merge consecutive blocks into chunks of MIN_CHARS..HARD_MAX characters."""
    out: list[str] = []
    cur = ""
    for raw in blocks:
        block = raw.strip("\n")
        if not block.strip():
            continue
        pieces = list(_split_long(block)) if len(block) > HARD_MAX else [block]
        for piece in pieces:
            if cur and len(cur) + 2 + len(piece) > SOFT_MAX:
                out.append(cur)
                cur = piece
            else:
                cur = f"{cur}\n\n{piece}" if cur else piece
    if cur:
        out.append(cur)
    out = [textwrap.dedent(c).strip("\n") for c in out]
    return [c for c in out if len(c.strip()) >= MIN_CHARS and len(set(c)) > 10]


def paragraphs(text: str) -> list[str]:
    """Blank-line separated blocks of a normalised text."""
    return [p for p in text.split("\n\n") if p.strip()]


# ---------------------------------------------------------------- domain readers


def stdlib_dir() -> Path:
    """The running interpreter's standard-library directory."""
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def stdlib_modules() -> list[Path]:
    """Sorted stdlib ``.py`` files, excluding tests, site-packages and caches."""
    root = stdlib_dir()
    files = [p for p in root.rglob("*.py") if not _STDLIB_SKIP & set(p.relative_to(root).parts[:-1])]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def read_code() -> Iterator[Chunk]:
    """Python stdlib source, split at blank lines and merged into chunks."""
    root = stdlib_dir()
    for path in stdlib_modules():
        text = _read_text(path)
        if text:
            for c in chunk_blocks(paragraphs(normalise(text))):
                yield Chunk(f"stdlib/{path.relative_to(root).as_posix()}", c)


def read_docs() -> Iterator[Chunk]:
    """Docstrings (module, class, function) extracted from stdlib modules with ``ast``."""
    root = stdlib_dir()
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for path in stdlib_modules():
        text = _read_text(path)
        if not text:
            continue
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        docs = [ast.get_docstring(n, clean=True) for n in ast.walk(tree) if isinstance(n, kinds)]
        blocks = [normalise(d) for d in docs if d and len(d.strip()) >= 40]
        for c in chunk_blocks(blocks):
            yield Chunk(f"stdlib/{path.relative_to(root).as_posix()}", c)


def read_legal() -> Iterator[Chunk]:
    """Licence texts (common-licenses, CPython LICENSE) and Debian ``copyright`` files."""
    seen: set[Path] = set()
    lic = Path("/usr/share/common-licenses")
    paths = sorted(lic.iterdir()) if lic.is_dir() else []
    paths += [stdlib_dir() / "LICENSE.txt"] + sorted(Path("/usr/share/doc").glob("*/copyright"))
    for path in paths:
        real = path.resolve()
        if real in seen or not real.is_file():
            continue
        seen.add(real)
        text = _read_text(real)
        if text:
            text = re.sub(r"(?m)^ \.$", "", text)  # DEP-5 paragraph separators
            for c in chunk_blocks(paragraphs(normalise(text, prose=True))):
                yield Chunk(str(path), c)


def read_changelog() -> Iterator[Chunk]:
    """Entries of Debian ``changelog.Debian.gz`` files, merged per package."""
    for path in sorted(Path("/usr/share/doc").glob("*/changelog.Debian.gz")):
        try:
            text = gzip.decompress(path.read_bytes()).decode("utf-8")
        except (OSError, UnicodeDecodeError, EOFError):
            continue
        text = normalise(text)
        starts = [m.start() for m in _CHANGELOG_HEAD.finditer(text)] + [len(text)]
        entries = [text[a:b].strip() for a, b in zip(starts, starts[1:])]
        for c in chunk_blocks(entries):
            yield Chunk(str(path), c)


def read_config() -> Iterator[Chunk]:
    """Packaged example/default configuration files (/usr/share) and stdlib data configs."""
    exts = {".conf", ".cfg", ".ini", ".toml", ".yaml", ".yml"}
    roots = [Path("/usr/share"), stdlib_dir()]
    for root in roots:
        files = sorted(p for p in root.rglob("*") if p.suffix in exts and p.is_file() and not p.is_symlink())
        for path in files:
            if "site-packages" in path.parts:
                continue
            text = _read_text(path)
            if text:
                for c in chunk_blocks(paragraphs(normalise(text))):
                    yield Chunk(str(path), c)


READERS: dict[str, Callable[[], Iterator[Chunk]]] = {
    "code": read_code,
    "docs": read_docs,
    "legal": read_legal,
    "changelog": read_changelog,
    "config": read_config,
}


# ---------------------------------------------------------------- selection and writing


def stable_key(domain: str, text: str) -> str:
    """Seeded sha256 ordering key, independent of file-system order."""
    return hashlib.sha256(f"{SEED}:{domain}:{text}".encode()).hexdigest()


def _dedup_key(text: str) -> str:
    return " ".join(text.lower().split())


def select(domain: str, chunks: Iterable[Chunk], n: int) -> list[Chunk]:
    """At most PER_SOURCE_CAP chunks per source, near-duplicates dropped, first ``n`` by stable key."""
    by_source: dict[str, list[Chunk]] = {}
    for c in chunks:
        by_source.setdefault(c.source, []).append(c)
    pool: list[tuple[str, Chunk]] = []
    for items in by_source.values():
        ranked = sorted(items, key=lambda c: stable_key(domain, c.text))
        pool += [(stable_key(domain, c.text), c) for c in ranked[:PER_SOURCE_CAP]]
    pool.sort(key=lambda kc: kc[0])
    out: list[Chunk] = []
    seen: set[str] = set()
    for _, c in pool:
        k = _dedup_key(c.text)
        if k not in seen:
            seen.add(k)
            out.append(c)
        if len(out) == n:
            break
    if len(out) < n:
        raise SystemExit(f"domain {domain!r}: only {len(out)} unique chunks, need {n}")
    return out


def write_table(path: Path, rows: list[dict[str, str]], columns: list[str]) -> None:
    """Write string columns as a zstd Parquet file (byte-deterministic for a pyarrow version)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in columns})
    dictionary = ["domain"] if "domain" in columns else False
    pq.write_table(table, path, compression="zstd", use_dictionary=dictionary)


def train_tokenizer(texts: list[str], out_dir: Path) -> None:
    """Train a deterministic byte-level BPE (vocab VOCAB_SIZE) and save it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=2048, **SPECIAL_TOKENS)
    fast.save_pretrained(str(out_dir))
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"  # loadable by transformers 4.x and 5.x
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")




SOURCES_HEADER = """# Shipped default corpus: sources and licences

Generated by `python -m workflows.assets.build_corpus` (seed {seed}, Python {py}). Every example is
real text read from this machine, normalised (NFC, tabs to spaces, trailing blanks trimmed, control
characters dropped, e-mail addresses replaced by `<email>`), chunked to {lo}-{hi} characters and
selected by a seeded sha256 of its text (at most {cap} chunks per source file, near-duplicates removed).

| domain | source | licence status |
|---|---|---|
| code | CPython {py} standard library `.py` files (tests excluded) | PSF License Agreement (CPython `LICENSE.txt`); redistributable |
| docs | docstrings extracted with `ast` from the same stdlib modules | PSF License Agreement; redistributable |
| legal | `/usr/share/common-licenses/*`, CPython `LICENSE.txt`, Debian `/usr/share/doc/*/copyright` | licence texts may be copied verbatim; copyright files are factual notices |
| changelog | Debian `/usr/share/doc/*/changelog.Debian.gz` entries | factual maintenance logs shipped with Debian packages |
| config | packaged example/default configs (`*.conf, *.cfg, *.ini, *.toml, *.yaml`) under `/usr/share` and the stdlib | files from DFSG-free Debian `main` packages / PSF; redistributable under their packages' licences |

Splits per domain: `val_<domain>` ({nval} held-out examples), the `target_mixed` share, then
{ntrain} corpus examples in {nshards} shards. All splits are disjoint (exact and whitespace/case
near-duplicates removed). `target_mixed` = {mix}.

## Counts and source files
"""


def write_sources(out: Path, picked: dict[str, list[Chunk]], splits: dict[str, dict[str, int]]) -> None:
    """Write SOURCES.md with per-domain counts and the list of contributing source files."""
    py = ".".join(map(str, sys.version_info[:3]))
    mix = ", ".join(f"{v} {k}" for k, v in TARGET_MIX.items())
    text = SOURCES_HEADER.format(seed=SEED, py=py, lo=MIN_CHARS, hi=HARD_MAX, cap=PER_SOURCE_CAP,
                                 nval=N_VAL, ntrain=N_TRAIN, nshards=N_SHARDS, mix=mix)
    stdlib = str(stdlib_dir())
    for domain, chunks in picked.items():
        files = sorted({c.source.replace(stdlib, "stdlib") for c in chunks})
        counts = ", ".join(f"{k}={v}" for k, v in splits[domain].items())
        text += f"\n### {domain}\n\n{counts}; {len(files)} source files:\n\n"
        text += "\n".join(f"- `{f}`" for f in files) + "\n"
    (out / "SOURCES.md").write_text(text, encoding="utf-8")


def build(out: Path) -> dict[str, str]:
    """Regenerate the default assets under ``out`` (corpus, targets, tokenizer; other folders such as
    ``scenarios/`` are left alone) and return the relative-path -> sha256 map written."""
    for sub in ("corpus", "targets", "tokenizer"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    train_texts: list[str] = []
    targets: dict[str, list[dict[str, str]]] = {"target_mixed": []}
    picked: dict[str, list[Chunk]] = {}
    splits: dict[str, dict[str, int]] = {}
    for domain, reader in READERS.items():
        n_tgt = TARGET_MIX.get(domain, 0)
        chunks = select(domain, reader(), N_VAL + n_tgt + N_TRAIN)
        picked[domain] = chunks
        rows = [{"id": f"{domain}-{i:06d}", "domain": domain, "text": c.text} for i, c in enumerate(chunks)]
        targets[f"val_{domain}"] = rows[:N_VAL]
        targets["target_mixed"] += rows[N_VAL:N_VAL + n_tgt]
        train = rows[N_VAL + n_tgt:]
        per = -(-len(train) // N_SHARDS)
        for s in range(N_SHARDS):
            write_table(out / "corpus" / f"{domain}-{s:04d}.parquet", train[s * per:(s + 1) * per],
                        ["id", "domain", "text"])
        train_texts += [r["text"] for r in train]
        splits[domain] = {"val": N_VAL, "target_mixed": n_tgt, "train": len(train)}
        print(f"{domain}: {len(chunks)} examples", file=sys.stderr)
    for name, rows in targets.items():
        write_table(out / "targets" / f"{name}.parquet", rows, ["id", "domain", "text"])
    train_tokenizer(train_texts, out / "tokenizer")
    write_sources(out, picked, splits)
    return write_checksums(out, exclude=("scenarios",))


def write_checksums(out: Path, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under ``out`` (but the top-level folders in ``exclude``) into
    ``out/CHECKSUMS.json``; returns the mapping."""
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.relative_to(out).parts[0] not in exclude
                   and p.name != "CHECKSUMS.json")
    sums = {p.relative_to(out).as_posix(): sha256_file(p) for p in files}
    (out / "CHECKSUMS.json").write_text(json.dumps({"algorithm": "sha256", "files": sums}, indent=1) + "\n")
    return sums


def run_cli(build_fn, description: str, default_out: Path, argv: list[str] | None = None) -> None:
    """``--out DIR`` → ``build_fn(DIR)``, then print what was written (shared by the asset builders)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=default_out, help="output directory (replaced)")
    args = parser.parse_args(argv)
    sums = build_fn(args.out)
    size = sum((args.out / k).stat().st_size for k in sums)
    print(f"wrote {len(sums)} files, {size / 1e6:.2f} MB to {args.out}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    run_cli(build, __doc__.splitlines()[0], DEFAULT_OUT, argv)


if __name__ == "__main__":
    main()
