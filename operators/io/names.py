"""Hygiene for names and ids that come from data or config and end up in paths and trainer formats.

Corpus contents are untrusted. A name is *safe* when it matches :data:`SAFE_NAME`: 1-128 ASCII
letters, digits, ``_``, ``-`` and ``.``, starting with a letter, digit or ``_``. Safe names cannot
contain ``/``, start with ``.`` (so neither ``.`` nor ``..``), hold whitespace, or need quoting in
YAML or a Megatron blend string. Domain names, target names, mixture names and ``run_id`` must be safe;
example ids may hold any text except control characters and line separators (selection files hold one
id per line).
"""

from __future__ import annotations

import re
from typing import Annotated

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import AfterValidator

from operators.errors import CorpusError

SAFE_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
SAFE_NAME_HELP = ("1-128 characters from A-Z a-z 0-9 _ - . , starting with a letter, digit or _ "
                  "(no /, spaces or leading dot)")
_SAFE = re.compile(SAFE_NAME)
# C0 controls, DEL, NEL and the Unicode line/paragraph separators (str.splitlines splits on them).
_BAD_ID_CHARS = r"[\x00-\x1f\x7f\x{85}\x{2028}\x{2029}]"
MAX_ID_CHARS = 4096


def is_safe_name(name: object) -> bool:
    return isinstance(name, str) and _SAFE.fullmatch(name) is not None


def check_name(name: object, what: str) -> str:
    """Return ``name`` if safe, else ValueError naming ``what`` and the offending value."""
    if not is_safe_name(name):
        raise ValueError(f"{what} {name!r} is not a safe name: {SAFE_NAME_HELP}")
    return name  # type: ignore[return-value]


def _validated(name: str) -> str:
    if not is_safe_name(name):
        raise ValueError(f"{name!r} is not a safe name: {SAFE_NAME_HELP}")
    return name


# A pydantic field type for safe names (config names, run ids, manifest domain and target names).
SafeName = Annotated[str, AfterValidator(_validated)]


def path_component(name: str, what: str = "name") -> str:
    """A safe name used as one path component (file or directory name); ValueError otherwise."""
    return check_name(name, what)


def _first(mask: pa.Array) -> int:
    return int(pc.index(mask, True).as_py())


def check_utf8(arr: pa.Array, uri: str, column: str) -> None:
    """CorpusError unless every value of a string column is valid UTF-8."""
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid as exc:
        raise CorpusError(f"shard {uri}: column {column!r} holds invalid UTF-8 ({exc})") from None


def check_domains(domains: pa.Array, uri: str, column: str) -> None:
    """CorpusError naming the shard, column and first unsafe domain value."""
    for value in pc.unique(domains).to_pylist():
        if not is_safe_name(value):
            raise CorpusError(f"shard {uri}: column {column!r}: domain {value!r} is not a safe name: "
                              f"{SAFE_NAME_HELP}. Rename it in the data or map shards to domains with "
                              "corpus.domain_from_path")


def check_ids(ids: pa.Array, uri: str, column: str) -> None:
    """CorpusError naming the shard, column and row of the first empty, overlong or control-char id."""
    if not len(ids):
        return
    lengths = pc.utf8_length(ids)
    checks = (
        (pc.equal(lengths, 0), "is empty"),
        (pc.greater(lengths, MAX_ID_CHARS), f"is longer than {MAX_ID_CHARS} characters"),
        (pc.match_substring_regex(ids, _BAD_ID_CHARS), "contains a control character or line break"),
    )
    for mask, why in checks:
        if pc.any(mask).as_py():
            row = _first(mask)
            value = ids[row].as_py()
            shown = value if len(value) <= 80 else value[:80] + "..."
            raise CorpusError(f"shard {uri}: column {column!r} row {row}: id {shown!r} {why}")


def check_shard_table(table: pa.Table, uri: str, columns: dict[str, str]) -> None:
    """Validate a normalised shard table (``id``, ``domain``, ``text``): UTF-8 everywhere, safe domains,
    clean ids. ``columns`` maps those names to the source column names used in messages."""
    for name in ("id", "domain", "text"):
        check_utf8(table.column(name).combine_chunks(), uri, columns.get(name, name))
    check_domains(table.column("domain").combine_chunks(), uri, columns.get("domain", "domain"))
    check_ids(table.column("id").combine_chunks(), uri, columns.get("id", "id"))
