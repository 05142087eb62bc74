"""The mixture problem of a refresh: previous manifest, real token counts, budget, bounds, prior."""

from __future__ import annotations

import logging

import numpy as np

from operators.io import storage
from operators.errors import ConfigError
from operators.manifest.schema import Manifest, parse_manifest, weights_of
from operators.mixture.budget import Budget, relax_reuse_caps
from operators.mixture.simplex import bounds_for, check_feasible, project_bounded_simplex, resolve_reference
from workflows.config import RunConfig
from workflows.solvers.base import MixtureProblem

log = logging.getLogger(__name__)


def manifests_root(cfg: RunConfig) -> str:
    return storage.join(cfg.output_uri, "manifests", cfg.name)


def latest_pointer_uri(cfg: RunConfig) -> str:
    return storage.join(manifests_root(cfg), "latest.json")


_UNPINNED = object()


def load_previous(cfg: RunConfig, pinned_uri: object = _UNPINNED) -> tuple[str | None, Manifest | None]:
    """The previous mixture: `pinned_uri` (pinned at run start, see workflows/run/pins.py; None: no previous),
    else `mixture.previous_manifest`, else this mixture name's `latest` pointer."""
    if pinned_uri is not _UNPINNED:
        if pinned_uri is None:
            return None, None
        uri = str(pinned_uri)
    else:
        uri = cfg.mixture.previous_manifest
    if uri is None:
        pointer = latest_pointer_uri(cfg)
        if not storage.exists(pointer, cfg.storage):
            return None, None
        uri = storage.read_json(pointer, cfg.storage)["manifest_uri"]
    try:
        return uri, parse_manifest(storage.read_bytes(uri, cfg.storage))
    except FileNotFoundError as exc:
        raise ConfigError(f"previous manifest {uri} does not exist") from exc


#: How many earlier manifests the consumption chain follows at most.
MAX_CHAIN = 100


def consumed_tokens(cfg: RunConfig, domains: list[str], previous: Manifest | None,
                    model_uri: str | None = None) -> tuple[np.ndarray, dict]:
    """Tokens earlier stages drew from each domain: Σ over the chain of previous manifests of weight ×
    that stage's token budget. The chain follows ``provenance.previous_manifest_uri`` and stops (with a
    warning) at a manifest without a budget or one it cannot read. A manifest made from the checkpoint
    this refresh starts from (``model_uri``) planned a stage that has not been trained yet (a re-analysis
    of the same checkpoint): it is skipped."""
    consumed = np.zeros(len(domains))
    stages: list[str] = []
    skipped: list[str] = []
    manifest, seen = previous, set()
    while manifest is not None and len(stages) + len(skipped) < MAX_CHAIN:
        same_checkpoint = model_uri is not None and \
            manifest.provenance.model_path.rstrip("/") == str(model_uri).rstrip("/")
        tokens = None if same_checkpoint else (manifest.budget or {}).get("tokens_next_stage")
        if same_checkpoint:
            skipped.append(manifest.provenance.run_id)
        elif not tokens:
            log.warning("previous manifest of run %s records no token budget; tokens consumed before it are "
                        "not counted", manifest.provenance.run_id)
            break
        else:
            w = weights_of(manifest)
            consumed += np.array([w.get(d, 0.0) for d in domains]) * float(tokens)
            stages.append(manifest.provenance.run_id)
        uri = manifest.provenance.previous_manifest_uri
        if not uri or uri in seen:
            break
        seen.add(uri)
        try:
            manifest = parse_manifest(storage.read_bytes(uri, cfg.storage))
        except (OSError, ValueError, storage.StorageError) as exc:
            log.warning("cannot read earlier manifest %s (%s); tokens consumed before it are not counted", uri, exc)
            break
    return consumed, {"stages": stages, "same_checkpoint": skipped, "tokens": dict(zip(domains, consumed.tolist()))}


def resolve_budget(cfg: RunConfig, domains: list[str], available: dict[str, int],
                   model_uri: str | None = None, consumed: np.ndarray | None = None) -> Budget:
    """The next stage's budget: config > stage_steps × tokens_per_step > checkpoint trainer_state.json
    remaining steps × tokens_per_step > one natural pass over the corpus (warned as a guess)."""
    b = cfg.mixture.budget
    u = np.array([available.get(d, 0) for d in domains], dtype=np.float64)
    tokens = b.tokens_next_stage
    source = "config"
    if tokens is None and b.stage_steps and b.tokens_per_step:
        tokens, source = b.stage_steps * b.tokens_per_step, "stage_steps x tokens_per_step"
    if tokens is None and b.tokens_per_step and model_uri:
        remaining = _remaining_steps(model_uri, cfg)
        if remaining:
            tokens, source = remaining * b.tokens_per_step, "checkpoint trainer_state.json remaining steps"
    if tokens is None:
        tokens, source = float(u.sum()), "default: one natural pass over the corpus (no budget given)"
        log.warning("no token budget for the next stage (mixture.budget.tokens_next_stage): assuming one "
                    "natural pass over the corpus, %.3g tokens; planned epochs and reuse caps are only as "
                    "good as that guess", tokens)
    return Budget(float(tokens), u, b.max_epochs, b.repetition_scale, source, consumed)


def _remaining_steps(model_uri: str, cfg: RunConfig) -> int | None:
    uri = storage.join(model_uri, "trainer_state.json")
    try:
        if not storage.exists(uri, cfg.storage):
            return None
        state = storage.read_json(uri, cfg.storage)
        remaining = int(state.get("max_steps", 0)) - int(state.get("global_step", 0))
    except (ValueError, TypeError, OSError):
        log.warning("cannot read %s; ignoring it for the token budget", uri)
        return None
    return remaining if remaining > 0 else None


def problem_bounds(cfg: RunConfig, domains: list[str], budget: Budget) -> tuple[np.ndarray, np.ndarray]:
    """Box constraints from the config combined with the budget's reuse cap."""
    lower, upper = bounds_for(domains, cfg.mixture.constraints)
    upper = np.minimum(upper, budget.reuse_upper())
    lower = np.minimum(lower, upper)
    check_feasible(domains, lower, upper)
    return lower, upper


def feasible_budget(cfg: RunConfig, domains: list[str], budget: Budget) -> tuple[Budget, dict | None]:
    """The budget with its reuse caps relaxed (warned, recorded) when they cannot sum to 1."""
    box_upper = bounds_for(domains, cfg.mixture.constraints)[1]
    relaxed, info = relax_reuse_caps(budget, box_upper)
    if info is not None:
        log.warning("mixture.budget: %s; relaxing every reuse cap by the same factor: max_epochs %.4g -> %.4g "
                    "(caps %s)", info["reason"], info["max_epochs_configured"], info["max_epochs_used"],
                    {d: round(c, 4) for d, c in zip(domains, info["caps_used"])})
        info["caps_configured"] = dict(zip(domains, info["caps_configured"]))
        info["caps_used"] = dict(zip(domains, info["caps_used"]))
    return relaxed, info


def build_problem(cfg: RunConfig, domains: list[str], available: dict[str, int], previous: Manifest | None,
                  model_uri: str | None = None) -> MixtureProblem:
    """The mixture problem of this refresh (see workflows/solvers/base.py) with a zero influence
    matrix: call ``.with_gi(infl.gi)`` once influence is aggregated."""
    domains = list(domains)
    prev_weights = weights_of(previous) if previous is not None else None
    consumed, chain = consumed_tokens(cfg, domains, previous, model_uri)
    budget, relaxed = feasible_budget(cfg, domains, resolve_budget(cfg, domains, available, model_uri, consumed))
    lower, upper = problem_bounds(cfg, domains, budget)
    tokens = {d: int(budget.tokens_available[i]) for i, d in enumerate(domains)}
    prior = resolve_reference(cfg.mixture.prior, domains, tokens=tokens)
    kind = cfg.mixture.reference
    if kind == "previous" and prev_weights is None:
        kind = cfg.mixture.prior
    reference = resolve_reference(kind, domains, prev_weights, tokens)
    reference = project_bounded_simplex(reference, lower, upper)
    target_weights = np.array([t.weight for t in cfg.targets], dtype=np.float64)
    target_weights /= target_weights.sum()
    return MixtureProblem(
        domains=domains, targets=[t.name for t in cfg.targets], target_weights=target_weights,
        gi=np.zeros((len(domains), len(cfg.targets))), normalize=cfg.influence.normalize, lower=lower,
        upper=upper, prior=project_bounded_simplex(prior, lower, upper), prior_kind=cfg.mixture.prior,
        reference=reference, reference_kind=kind, budget=budget, previous_weights=prev_weights,
        shrinkage=cfg.influence.shrinkage,
        info={"beta": cfg.mixture.beta, "tokens_available": tokens, "budget_source": budget.source,
              "budget_relaxed": relaxed, "consumed_by_earlier_stages": chain})
