"""Typed run configuration: OmegaConf YAML + CLI dotlist overrides, validated by pydantic."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cluster.spec import ClusterSpec
from operators.io.corpus import CorpusSpec, Location, SamplingSpec, TargetSpec
from operators.errors import ConfigError
from operators.selection.influence_model import InfluenceModelSpec
from operators.mixture.simplex import MixtureConstraints
from operators.io.names import SafeName
from operators.io.secrets import redact
from operators.training.probing import ProbeSpec
from operators.features.featurize import FeaturizeSpec
from operators.io.splits import TargetSplitSpec
from operators.io.storage import StorageSpec
from operators.model.tiny_lm import TinyLMSpec

CONFIG_DIR = Path(__file__).parent / "configs"
BUILTIN_MODEL = "builtin://tiny"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Spec):
    """The causal LM checkpoint (local dir or s3://); `builtin://tiny` builds the embedded default."""

    path: Location = BUILTIN_MODEL
    checkpoint_root: Location | None = None  # refresh: pick the latest checkpoint-<step> under this root
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    tiny: TinyLMSpec = TinyLMSpec()
    cache_dir: Location | None = None
    average_checkpoints: int = Field(default=1, ge=1, description=(
        "with checkpoint_root: featurize the last N checkpoints and use their AVERAGE group influence "
        "(LESS/TracIn style; each checkpoint under runs/<run_id>/ckpt-<step>/, the chosen ones pinned "
        "in model.checkpoints); fewer than N checkpoints under the root is an error; 1: only the latest"))
    checkpoints: list[Location] = Field(default=[], description=(
        "the checkpoints influence is averaged over, oldest first (the last is the one probes continue). "
        "A run fills it from checkpoint_root when average_checkpoints > 1; it may also be listed by hand, "
        "with average_checkpoints equal to its length"))
    optimizer_state: Literal["auto", "require", "ignore"] = Field(default="auto", description=(
        "the checkpoint's optimizer.pt (influmix layout or a torch Adam/AdamW state_dict as the HF Trainer "
        "writes it) that probes continue: auto = use it when its moments map onto the model's parameters, "
        "else warn and start probes from a fresh AdamW; require = fail before any model work when it is "
        "missing or cannot be mapped; ignore = always a fresh AdamW"))

    @model_validator(mode="after")
    def _checkpoint_list(self) -> ModelSpec:
        if self.checkpoints and len(self.checkpoints) != self.average_checkpoints:
            raise ValueError(f"model.checkpoints lists {len(self.checkpoints)} checkpoints but "
                             f"average_checkpoints={self.average_checkpoints}; they must agree")
        if self.checkpoints and self.checkpoint_root:
            raise ValueError("give either model.checkpoint_root (the newest average_checkpoints are picked) "
                             "or model.checkpoints, not both")
        return self


class InfluenceSpec(_Spec):
    """Group influence aggregation: preconditioner, per-target normalisation, bootstrap."""

    preconditioner: Literal["identity", "gauss_newton", "kfac"] = "gauss_newton"
    relative_damping: float = Field(default=0.1, gt=0)
    normalize: Literal["balanced", "loss", "zscore", "max", "none"] = Field(default="balanced", description=(
        "per-target scale of group influence before targets[].weight combines them; balanced: each target "
        "on its own scale (operators/influence/group.py)"))
    bootstrap: int = Field(default=200, ge=0)
    confidence: float = Field(default=0.9, gt=0, lt=1)
    seed: int = 0
    domain_weighting: Literal["tokens", "examples"] = Field(default="tokens", description=(
        "how a domain's influence averages its examples: tokens (each example by its token count, as a "
        "trainer's token-weighted loss and the mixture weights count them) or examples (plain mean)"))
    shrinkage: Literal["empirical_bayes", "none"] = Field(default="empirical_bayes", description=(
        "empirical_bayes: pull each domain's influence toward the pooled mean by its bootstrap standard "
        "error (differences within noise vanish, so noise alone cannot concentrate the mixture); needs "
        "bootstrap > 1. none: use the raw means"))


class BudgetSpec(_Spec):
    """The next training stage's token budget: sets planned epochs, reuse caps and repeat value."""

    tokens_next_stage: int | None = Field(default=None, gt=0, description=(
        "tokens the next stage trains on; default: stage_steps × tokens_per_step, else the checkpoint's "
        "remaining steps (trainer_state.json) × tokens_per_step, else one natural pass over the corpus "
        "(with a warning)"))
    stage_steps: int | None = Field(default=None, gt=0, description="optimizer steps of the next stage")
    tokens_per_step: int | None = Field(default=None, gt=0, description="global batch tokens per step")
    max_epochs: float | None = Field(default=4.0, gt=0, description=(
        "hard cap on passes over a domain's unique tokens (Muennighoff et al.: ~4 epochs are nearly as "
        "good as fresh data); null: no cap"))
    repetition_scale: float = Field(default=15.4, gt=0, description="R* of the repeated-data value decay")


class ExploreSpec(_Spec):
    """Validation candidates away from the influence answer (workflows/stages/explore.py)."""

    generators: list[str] = Field(default=["dirichlet", "heavy", "per_target"], description=(
        "first-round exploration generators by name (workflows/stages/explore.py EXPLORERS)"))
    dirichlet: int = Field(default=6, ge=0, description="RegMix-style Dirichlet mixtures around the reference")
    concentrations: list[float] = Field(default=[0.5, 1.0, 2.0, 4.0], description=(
        "Dirichlet concentration per domain (× K × reference); one drawn per sample; small = sparse"))
    heavy_share: float = Field(default=0.65, gt=0, lt=1, description=(
        "weight of a domain-heavy mixture on its domain (capped by the bounds), the rest by reference"))
    heavy_max: int = Field(default=6, ge=0, description=(
        "most domain-heavy mixtures (domains with positive evidence, highest score upper bound first)"))
    trajectory: bool = Field(default=False, description=(
        "second round: also the primary solver's answer on multi-step influence, the domains' effects read "
        "off the first-round probe trajectories (operators/influence/trajectory.py). Off by default: on the "
        "testbed that answer was worse than the first-order one in the under-learned-domain scenarios "
        "(docs/MIXTURE.md)"))
    trajectory_horizon: Literal["probe", "stage"] = Field(default="probe", description=(
        "where the multi-step effects are taken: probe = measured at the probe's last point; stage = "
        "extrapolated log-linearly to the stage (about 3x the noise; on the testbed it hurt, docs/MIXTURE.md)"))
    surrogate: int = Field(default=4, ge=0, description=(
        "second round: mixtures proposed by a surrogate fitted on every first-round probe (0: none)"))
    surrogate_kappa: float = Field(default=0.5, ge=0, description="surrogate picks by mean − kappa·std")
    surrogate_min_cv_r2: float = Field(default=0.0, description=(
        "no surrogate proposals unless its leave-one-out R² exceeds this"))
    surrogate_ci_replicates: int = Field(default=32, ge=0, description=(
        "weight intervals of the surrogate's proposals: refits on this many two-way (seeds x examples) "
        "resamples of the first round (0: none; a published proposal then has no weight CI)"))
    min_l1: float = Field(default=0.1, ge=0, description=(
        "an exploration mixture closer than this (L1) to another candidate is dropped"))

    @field_validator("concentrations")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if not v or any(c <= 0 for c in v):
            raise ValueError(f"concentrations must be positive and not empty, got {v}")
        return v


class ValidationSpec(_Spec):
    """Pre-publish check: short probe trainings from the checkpoint on the validation split."""

    enabled: bool = True
    cache_probes: bool = Field(default=True, description=(
        "keep probe results in the feature datastore, addressed by their inputs (checkpoint, examples, "
        "settings, mixture, seed): a later refresh of the same checkpoint reuses every probe it repeats"))
    steps: int = Field(default=16, ge=1, description="optimizer steps per probe")
    batch_size: int = Field(default=8, ge=1)
    seeds: int = Field(default=2, ge=2, description=(
        "probe seeds per candidate (batch draws); at least 2, or seed noise cannot be estimated"))
    line_points: list[float] = Field(default=[0.5], description=(
        "points between the reference (0) and the solved mixture (1) that are also measured"))
    beta_path: list[float] = Field(default=[2.0, 4.0], description=(
        "the primary solver is also solved at beta × each of these (a STRONGER pull toward the prior: a more cautious move) and "
        "those answers are validated too"))
    reference_examples: int = Field(default=96, ge=8, description="validation-split target examples")
    max_pool: int = Field(default=96, ge=1, description="largest per-domain probe pool (examples)")
    budget_scaled_pools: bool = Field(default=True, description=(
        "size each domain's probe pool by its unique tokens / the stage budget, so probes repeat a "
        "domain as often as the next stage would"))
    margin: float = Field(default=1.0, ge=0, description=(
        "publish a candidate only if it beats the reference by this many standard errors"))
    baselines_eligible: bool = Field(default=True, description="a baseline that measures best may be published")
    probe: ProbeSpec = ProbeSpec(lr=1e-3, reference_batch_size=64)
    seed: int = 0
    explore: ExploreSpec = ExploreSpec()
    horizon_fractions: list[float] = Field(default=[0.25, 0.5, 1.0], description=(
        "probe trajectory points as fractions of `steps`; the loss change is extrapolated log-linearly "
        "from them to the next stage's length (operators/mixture/horizon.py)"))
    horizon_max_ratio: float = Field(default=16.0, ge=1, description=(
        "never extrapolate beyond this many times the probe length"))
    decide_at: Literal["probe", "stage"] = Field(default="probe", description=(
        "horizon whose gains pick and confirm the published mixture: the measured probe horizon, or the "
        "extrapolated stage horizon (noisier)"))
    confirm_seeds: int = Field(default=6, ge=0, description=(
        "fresh seeds re-measuring the best candidate and the reference before publishing (0: no "
        "confirmation; the seeds that chose a candidate then also publish it). Seed noise dominates the "
        "confirmation's error, so more seeds buy most of its power (docs/MIXTURE.md, publish rule)"))
    rotate: Literal["checkpoint", "none"] = Field(default="checkpoint", description=(
        "checkpoint: every new checkpoint draws its own validation examples and probe seeds (seeded by "
        "the checkpoint's identity), so successive refreshes are not tuned to one fixed validation "
        "sample; a re-analysis of the same checkpoint draws the same ones and reuses its probes. "
        "none: always `seed`"))
    confirm_top: int = Field(default=3, ge=1, description=(
        "most finalists re-measured on fresh seeds and held-back examples: the first-round winner and the "
        "candidates within `finalist_se` standard errors of it. The winner must pass the publish rule on "
        "that data; a finalist that measures better over both rounds replaces it only if its own "
        "simultaneous interval (Bonferroni over the finalists) is above 0, and the published interval is "
        "simultaneous, so the choice among finalists does not inflate it (docs/MIXTURE.md, publish rule)"))
    finalist_se: float = Field(default=1.5, ge=0, description=(
        "a first-round candidate is a finalist when its gain is within this many standard errors "
        "(of the difference) of the first-round winner's: a tie at the first round's precision"))
    target_balance: Literal["nats", "relative"] = Field(default="nats", description=(
        "several targets: nats = Σ targets[].weight × each target's own per-token loss change; relative = "
        "the same with each change divided by that target's loss before training"))

    @field_validator("horizon_fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not v or any(not 0.0 < x <= 1.0 for x in v):
            raise ValueError(f"horizon fractions must lie in (0, 1], got {v}")
        return v

    @field_validator("line_points")
    @classmethod
    def _in_unit(cls, v: list[float]) -> list[float]:
        if any(not 0.0 < x < 1.0 for x in v):
            raise ValueError(f"line points must lie strictly between 0 and 1, got {v}")
        return v


class MixtureSpec(_Spec):
    """Domain mixture: solver (by name), what it is compared with, budget, bounds, validation."""

    solver: str = "tikmix_d"
    compare: list[str] = Field(default=["tikmix_d_paper"], description=(
        "other solvers run on the same problem: reported, and validated as candidates"))
    baselines: list[str] = Field(default=["uniform", "tokens", "dsir"], description="baseline mixtures")
    options: dict[str, dict[str, Any]] = Field(default={}, description="per solver/baseline options by name")
    beta: float = Field(default=1.0, gt=0, description="KL strength of regularised solvers (tikmix_d)")
    prior: Literal["uniform", "tokens"] = Field(default="uniform", description=(
        "fixed anchor of regularised solvers; does not move between refreshes"))
    reference: Literal["previous", "uniform", "tokens"] = Field(default="previous", description=(
        "the mixture a refresh must beat (and publishes when nothing measures better); previous falls "
        "back to the prior on a first refresh"))
    constraints: MixtureConstraints = MixtureConstraints()
    budget: BudgetSpec = BudgetSpec()
    validation: ValidationSpec = ValidationSpec()
    previous_manifest: str | None = None  # default: the `latest` pointer of this mixture name
    data_prefixes: dict[str, str] = {}  # Megatron data prefixes per domain

    @model_validator(mode="after")
    def _known_names(self) -> MixtureSpec:
        from workflows.baselines import BASELINES
        from workflows.solvers import SOLVERS

        for name in [self.solver, *self.compare]:
            if name not in SOLVERS.names():
                raise ValueError(f"unknown solver {name!r}; known: {SOLVERS.names()}")
        for name in self.baselines:
            if name not in BASELINES.names():
                raise ValueError(f"unknown baseline {name!r}; known: {BASELINES.names()}")
        for name, data in self.options.items():
            registry = SOLVERS if name in SOLVERS.names() else BASELINES
            try:
                registry.options(name, data, f"options.{name}")
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return self


class MatesSpec(_Spec):
    """MATES: oracle probes → data influence model → score pool on actors → Gumbel top-k per domain."""

    enabled: bool = False
    oracle_samples: int = Field(default=384, ge=8, description=(
        "one-step oracle probes (cheap on small models); the influence model's CV needs a few hundred"))
    reference_target: str | None = None  # default: the first target set
    reference_examples: int = Field(default=64, ge=2, description=(
        "reference-set examples; probed as two halves to measure the label noise"))
    probe: ProbeSpec = ProbeSpec()
    model: InfluenceModelSpec = InfluenceModelSpec()
    selection_ratio: float = Field(default=0.2, gt=0, le=1)
    temperature: float = Field(default=0.5, ge=0)
    seed: int = 0


class RunConfig(_Spec):
    """A whole mixture refresh: corpus → features → influence → mixture → manifest."""

    name: SafeName = "default"
    run_id: SafeName | None = None
    output_uri: Location
    storage: StorageSpec = StorageSpec()
    corpus: CorpusSpec
    sampling: SamplingSpec = SamplingSpec()
    targets: list[TargetSpec] = Field(min_length=1)
    targets_split: TargetSplitSpec = TargetSplitSpec()
    model: ModelSpec = ModelSpec()
    featurize: FeaturizeSpec = FeaturizeSpec()
    influence: InfluenceSpec = InfluenceSpec()
    mixture: MixtureSpec = MixtureSpec()
    mates: MatesSpec = MatesSpec()
    cluster: ClusterSpec = ClusterSpec()
    log_format: Literal["text", "json"] = "text"

    @field_validator("targets")
    @classmethod
    def _unique_targets(cls, targets: list[TargetSpec]) -> list[TargetSpec]:
        names = [t.name for t in targets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"target names must be unique, repeated: {dupes}")
        return targets

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        if self.influence.preconditioner == "kfac" and self.featurize.projection.kind != "kronecker":
            raise ValueError("influence.preconditioner=kfac needs featurize.projection.kind=kronecker")
        if self.mates.reference_target and self.mates.reference_target not in {t.name for t in self.targets}:
            raise ValueError(f"mates.reference_target {self.mates.reference_target!r} is not a target name")
        return self

    def config_hash(self) -> str:
        """Hash of the semantic content (excludes run_id, logging and cluster placement)."""
        data = self.model_dump(mode="json", exclude={"run_id", "log_format", "cluster"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def resolved_run_id(self) -> str:
        """The run id once a run has fixed it (``run_id``). Before that, a config-only stand-in: runs
        derive their id from the feature and analysis keys (workflows/run/keys.py, ``influmix config``)."""
        return self.run_id or f"{self.name}-{self.config_hash()[:12]}"


def _asset_resolver(rel: str = "") -> str:
    from workflows.assets import ASSETS_DIR

    path = Path(ASSETS_DIR) / "data" / rel
    return str(path)


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("asset"):
        register = getattr(OmegaConf, "register_resolver", None) or OmegaConf.register_new_resolver
        register("asset", _asset_resolver)


def resolve_config_path(name_or_path: str) -> Path:
    """A YAML path, or the name of a bundled config in workflows/configs (e.g. `default`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = CONFIG_DIR / f"{name_or_path}.yaml"
    if bundled.is_file():
        return bundled
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config {name_or_path!r} is neither a file nor a bundled config {names}")


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "<root>"
        lines.append(f"  {loc}: {item['msg']}")
    return "\n".join(lines)


# PyYAML and OmegaConf raise these on malformed text, keys or values
_READ_ERRORS = (OmegaConfBaseException, yaml.YAMLError, UnicodeError, ValueError, TypeError, LookupError, OSError)


def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load YAML (with `defaults` base inheritance), apply `key=value` overrides, validate."""
    _register_resolvers()
    try:
        if name_or_path.startswith("env:"):
            var = name_or_path[4:]
            if var not in os.environ:
                raise ConfigError(f"config source {name_or_path!r}: environment variable {var} is not set")
            path = Path(f"<env {var}>")
            merged = _merge_bases(OmegaConf.create(os.environ[var]), CONFIG_DIR)
        else:
            path = resolve_config_path(name_or_path)
            merged = _merge_bases(OmegaConf.load(path), path.parent, (path.resolve(),))
        if overrides:
            merged = _apply_overrides(merged, overrides)
        if not isinstance(merged, DictConfig):
            raise ConfigError(f"config {path} must be a YAML mapping (key: value), "
                              f"got {type(merged).__name__}")
        data: Any = OmegaConf.to_container(merged, resolve=True)
    except _READ_ERRORS as exc:
        raise ConfigError(f"cannot read config {path}: {type(exc).__name__}: {exc}") from None
    return validate_config(data, source=str(path))


def _apply_overrides(conf: Any, overrides: list[str] | tuple[str, ...]) -> Any:
    """``conf`` with the ``key=value`` overrides merged in; an override that cannot be read or merged on
    its own is a ConfigError naming its key."""
    bad = [o for o in overrides if "=" not in o or "" in o.split("=", 1)[0].split(".")]
    if bad:
        raise ConfigError(f"overrides must look like key=value with a dotted key, got {bad}")
    try:
        return OmegaConf.merge(conf, OmegaConf.from_dotlist(list(overrides)))
    except _READ_ERRORS:
        for override in overrides:  # name the first override that fails by itself
            try:
                OmegaConf.merge(conf, OmegaConf.from_dotlist([override]))
            except _READ_ERRORS as exc:
                raise ConfigError(f"override {override.split('=', 1)[0]}: cannot apply {override!r}: "
                                  f"{type(exc).__name__}: {exc}") from None
        raise


def validate_config(data: Any, source: str = "<dict>") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def _base_path(base: str, directory: Path) -> Path:
    local = directory / f"{base}.yaml"
    return local if local.is_file() else resolve_config_path(base)


def _merge_bases(conf: Any, directory: Path, chain: tuple[Path, ...] = ()) -> Any:
    """`defaults: [base, ...]` inherits from sibling (or bundled) YAML files, later keys winning."""
    bases = conf.pop("defaults", None) if isinstance(conf, DictConfig) else None
    if not bases:
        return conf
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, ListConfig | list):
        raise ConfigError(f"defaults must be a list of config names, got {bases!r}")
    merged = OmegaConf.create({})
    for base in list(bases):
        path = _base_path(str(base), directory).resolve()
        if path in chain or len(chain) > 16:
            raise ConfigError(f"defaults: {base!r} ({path}) inherits from itself")
        merged = OmegaConf.merge(merged, _merge_bases(OmegaConf.load(path), path.parent, (*chain, path)))
    return OmegaConf.merge(merged, conf)


def dump_config(cfg: RunConfig) -> str:
    """Resolved config as YAML (written into every run directory); secret environment values that an
    interpolation pulled in are masked."""
    return redact(OmegaConf.to_yaml(OmegaConf.create(cfg.model_dump(mode="json"))))
