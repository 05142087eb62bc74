"""Choose the next domain mixture from group influence (TiKMiX-D), with bootstrap-able solver."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from operators import storage
from operators.errors import ConfigError
from operators.manifest import Manifest, parse_manifest, weights_of
from operators.mixture import bounds_for, resolve_reference, solve_tikmix_d
from workflows.config import RunConfig

log = logging.getLogger(__name__)


def manifests_root(cfg: RunConfig) -> str:
    return storage.join(cfg.output_uri, "manifests", cfg.name)


def latest_pointer_uri(cfg: RunConfig) -> str:
    return storage.join(manifests_root(cfg), "latest.json")


_UNPINNED = object()


def load_previous(cfg: RunConfig, pinned_uri: object = _UNPINNED) -> tuple[str | None, Manifest | None]:
    """The previous mixture: `pinned_uri` (pinned at run start, see workflows/pins.py; None: no previous),
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


@dataclass
class MixtureProblem:
    """The TiKMiX-D problem for fixed domains: reference mixture, bounds and KL strength."""

    domains: list[str]
    w_ref: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    beta: float
    reference_kind: str
    previous_weights: dict[str, float] | None = None
    info: dict = field(default_factory=dict)

    def solve(self, scores: np.ndarray) -> np.ndarray:
        return solve_tikmix_d(scores, self.w_ref, self.beta, self.lower, self.upper)

    def solver_fn(self) -> Callable[[np.ndarray], np.ndarray]:
        return self.solve


def build_problem(cfg: RunConfig, domains: list[str], tokens: dict[str, int],
                  previous: Manifest | None) -> MixtureProblem:
    prev_weights = weights_of(previous) if previous is not None else None
    # Featurized tokens are a sample of the corpus: scale by the sampling rate for the reuse cap.
    tokens_available = {d: int(round(tokens.get(d, 0) / cfg.sampling.rate)) for d in domains}
    lower, upper = bounds_for(domains, cfg.mixture.constraints, tokens_available)
    w_ref = resolve_reference(cfg.mixture.reference, domains, prev_weights, tokens)
    return MixtureProblem(domains=domains, w_ref=w_ref, lower=lower, upper=upper, beta=cfg.mixture.beta,
                          reference_kind=cfg.mixture.reference, previous_weights=prev_weights,
                          info={"tokens_available": tokens_available})
