"""Mixture manifests: the schema-versioned record a refresh writes and trainers consume.

A manifest is a superset of RegMix's YAML (`train: {domain: weight}`) and DoReMi's JSON domain weights.
Renderers are pure and return str/bytes; the workflow writes them.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from fractions import Fraction
from typing import Annotated, Any

import numpy as np
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from operators.errors import ConfigError
from operators.io.names import SafeName

SCHEMA_VERSION = "1.0"
_WEIGHT_SUM_TOL = 1e-6


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # every float is finite


def _jsonable(value: Any, where: str = "") -> Any:
    """Plain JSON types from numpy scalars/arrays and tuples; ValueError on anything else (or NaN/inf)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"value at {where or '<root>'} must be finite, got {value}")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ValueError(f"value at {where or '<root>'} is a {type(value).__name__}, which has no JSON form")


# A free-form mapping stored in the manifest: numpy values become plain JSON types, anything else is rejected.
JsonDict = Annotated[dict[str, Any], AfterValidator(lambda v: _jsonable(v))]


def _check_interval(ci: tuple[float, float] | None, what: str) -> None:
    if ci is not None and ci[0] > ci[1]:
        raise ValueError(f"{what} must be a (low, high) pair with low <= high, got {ci}")


class DomainEntry(_Model):
    name: SafeName
    weight: float = Field(ge=0)
    previous_weight: float | None = Field(default=None, ge=0)
    influence_score: float = 0.0
    score_ci: tuple[float, float] | None = None
    weight_ci: tuple[float, float] | None = None
    n_examples: int = Field(default=0, ge=0)
    n_tokens: int = Field(default=0, ge=0)
    tokens_available: int | None = Field(default=None, ge=0)
    planned_epochs: float | None = Field(default=None, ge=0)  # weight × stage budget / tokens_available
    data_prefix: str | None = None

    @model_validator(mode="after")
    def _check(self) -> DomainEntry:
        _check_interval(self.score_ci, f"domain {self.name!r} score_ci")
        _check_interval(self.weight_ci, f"domain {self.name!r} weight_ci")
        return self


class TargetEntry(_Model):
    name: SafeName
    weight: float = Field(ge=0)
    n_examples: int = Field(default=0, ge=0)


class InfluenceBlock(_Model):
    """GI[k][v] rows in domain_order, columns in target_order."""

    gi: list[list[float]]
    gi_normalized: list[list[float]]
    domain_order: list[str]
    target_order: list[str]
    preconditioner: str = "identity"
    preconditioner_params: JsonDict = {}

    @model_validator(mode="after")
    def _check(self) -> InfluenceBlock:
        shape = (len(self.domain_order), len(self.target_order))
        for field in ("gi", "gi_normalized"):
            rows = getattr(self, field)
            if len(rows) != shape[0] or any(len(r) != shape[1] for r in rows):
                raise ValueError(f"influence.{field} must be {shape[0]}x{shape[1]} (domains x targets)")
        return self


class SelectedDomain(_Model):
    """MATES selection result for one domain: where the selected example ids live and how many."""

    uri: str = Field(min_length=1)
    count: int = Field(ge=0)
    pool: int | None = Field(default=None, ge=0)


class Selection(_Model):
    method: str = "mates"
    domains: dict[str, SelectedDomain]
    params: JsonDict = {}


class Provenance(_Model):
    model_path: str
    model_fingerprint: str
    checkpoint_step: int | None = None
    config_hash: str
    run_id: SafeName
    created_at: str
    influmix_version: str
    projector: JsonDict = {}
    git_commit: str | None = None
    previous_manifest_uri: str | None = None

    @field_validator("created_at", mode="before")
    @classmethod
    def _iso(cls, v: Any) -> Any:
        if isinstance(v, datetime):
            return v.isoformat()
        try:
            datetime.fromisoformat(v)
        except (TypeError, ValueError):
            raise ValueError(f"provenance.created_at must be an ISO-8601 timestamp, got {v!r}") from None
        return v


class Manifest(_Model):
    schema_version: str = SCHEMA_VERSION
    name: SafeName
    domains: list[DomainEntry] = Field(min_length=1)
    targets: list[TargetEntry] = []
    influence: InfluenceBlock
    solver: JsonDict = {}
    budget: JsonDict = {}  # next-stage token budget, its source and the reuse cap
    validation: JsonDict = {}  # pre-publish probe summary: what was published and why
    selection: Selection | None = None
    provenance: Provenance

    @field_validator("schema_version")
    @classmethod
    def _version(cls, v: str) -> str:
        if v != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema_version {v!r}; this influmix reads {SCHEMA_VERSION!r}")
        return v

    @model_validator(mode="after")
    def _check(self) -> Manifest:
        names = [d.name for d in self.domains]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"domain names must be unique, repeated: {dupes}")
        total = math.fsum(d.weight for d in self.domains)
        if abs(total - 1.0) > _WEIGHT_SUM_TOL:
            raise ValueError(f"domain weights must sum to 1 (within {_WEIGHT_SUM_TOL}), got {total!r}")
        if sorted(self.influence.domain_order) != sorted(names):
            order = self.influence.domain_order
            raise ValueError(f"influence.domain_order {order} does not match domains {names}")
        targets = [t.name for t in self.targets]
        if self.targets and sorted(self.influence.target_order) != sorted(targets):
            order = self.influence.target_order
            raise ValueError(f"influence.target_order {order} does not match targets {targets}")
        if self.selection is not None:
            unknown = sorted(set(self.selection.domains) - set(names))
            if unknown:
                raise ValueError(f"selection names unknown domains {unknown}")
        return self


def weights_of(manifest: Manifest) -> dict[str, float]:
    """{domain: weight} in manifest order."""
    return {d.name: d.weight for d in manifest.domains}


def _as_dict(manifest: Manifest) -> dict[str, Any]:
    return manifest.model_dump(mode="json")


def render_json(manifest: Manifest) -> str:
    """Canonical JSON (sorted keys, 2-space indent, trailing newline)."""
    return json.dumps(_as_dict(manifest), indent=2, sort_keys=True, allow_nan=False) + "\n"


def _yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=True, default_flow_style=False, allow_unicode=True, width=120)


def render_yaml(manifest: Manifest) -> str:
    """The same content as render_json, as YAML (PyYAML safe_dump, sorted keys)."""
    return _yaml(_as_dict(manifest))


def _positive(manifest: Manifest) -> list[DomainEntry]:
    """Domains with weight > 0 (zero-weight datasets break Megatron blends and HF all_exhausted)."""
    return [d for d in manifest.domains if d.weight > 0]


def megatron_blend(manifest: Manifest, prefixes: dict[str, str] | None = None) -> str:
    """Megatron-LM `--data-path` blend "w1 prefix1 w2 prefix2 ..." (zero-weight domains omitted).

    A domain's prefix is prefixes[name], else its data_prefix, else its name; weights are written with repr
    (shortest round-trip form).
    """
    prefixes = prefixes or {}
    unknown = sorted(set(prefixes) - {d.name for d in manifest.domains})
    if unknown:
        raise ConfigError(f"mixture.data_prefixes names unknown domains {unknown}")
    parts = []
    for d in _positive(manifest):
        prefix = prefixes.get(d.name) or d.data_prefix or d.name
        if not prefix or any(c.isspace() for c in prefix):
            raise ConfigError(
                f"Megatron data prefix for domain {d.name!r} must be non-empty without whitespace: {prefix!r}"
            )
        parts.append(f"{d.weight!r} {prefix}")
    return " ".join(parts)


def _exact_probabilities(weights: list[float]) -> list[float]:
    """Normalise to multiples of 2**-52 (largest-remainder rounding, exact rationals), so that every summation
    order of the result gives exactly 1.0 (all partial sums are representable)."""
    scale = 1 << 52
    total = sum(Fraction(w) for w in weights)
    raw = [Fraction(w) * scale / total for w in weights]
    units = [math.floor(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: units[i] - raw[i])[: scale - sum(units)]:
        units[i] += 1
    return [u / scale for u in units]


def hf_interleave(manifest: Manifest, seed: int | None = None) -> dict[str, Any]:
    """Arguments for `datasets.interleave_datasets` (zero-weight domains omitted; probabilities sum to 1.0).

    seed defaults to manifest.solver["seed"] when present, else 0.
    """
    entries = _positive(manifest)
    if seed is None:
        solver_seed = manifest.solver.get("seed", 0)
        seed = solver_seed if isinstance(solver_seed, int) else 0
    return {
        "datasets": [d.name for d in entries],
        "probabilities": _exact_probabilities([d.weight for d in entries]),
        "stopping_strategy": "all_exhausted",
        "seed": seed,
    }


def domain_weights_yaml(manifest: Manifest) -> str:
    """RegMix-style YAML: `train: {domain: weight}`."""
    return _yaml({"train": weights_of(manifest)})


def render_all(manifest: Manifest, prefixes: dict[str, str] | None = None) -> dict[str, bytes]:
    """Every rendering, keyed by the file name the workflow writes it under."""
    return {
        "manifest.json": render_json(manifest).encode(),
        "manifest.yaml": render_yaml(manifest).encode(),
        "megatron_blend.txt": (megatron_blend(manifest, prefixes) + "\n").encode(),
        "hf_interleave.json": (json.dumps(hf_interleave(manifest), indent=2, sort_keys=True) + "\n").encode(),
        "domain_weights.yaml": domain_weights_yaml(manifest).encode(),
    }


def parse_manifest(data: bytes | str, source: str = "<manifest>") -> Manifest:
    """Manifest from JSON or YAML text; ConfigError naming the field on a bad schema_version or content."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise ConfigError(f"manifest {source} is not UTF-8: {exc}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        try:
            obj = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"manifest {source} is neither JSON nor YAML: {exc}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"manifest {source} must be a mapping, got {type(obj).__name__}")
    version = obj.get("schema_version")
    if version is None:
        raise ConfigError(f"manifest {source}: schema_version is missing")
    if version != SCHEMA_VERSION:
        raise ConfigError(
            f"manifest {source}: unsupported schema_version {version!r} (expected {SCHEMA_VERSION!r})"
        )
    try:
        return Manifest.model_validate(obj)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"invalid manifest {source}:\n  " + "\n  ".join(lines)) from None
