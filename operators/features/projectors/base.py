"""The projector interface, its spec and the ``PROJECTORS`` registry keyed by ``ProjectionSpec.kind``.

A projector maps per-example weight gradients of the selected linear layers (in sorted-name order) to a
fixed-size float32 feature vector. Everything random must depend only on ``(spec.seed, layer name,
layer shape)``, so every process, machine and device gets bitwise-identical features.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from operators.errors import ConfigError
from operators.registry import Registry

#: Work space in float32 elements per chunk of examples when full gradients are formed (64 MiB).
BLOCK_ELEMS = 1 << 24

#: ``(Σ x̃x̃ᵀ, Σ δ̃δ̃ᵀ, tokens)`` of one layer over a batch's non-pad tokens (K-FAC factor sums).
KfacSums = tuple[torch.Tensor, torch.Tensor, int]
#: ``transform(layer name, per-example gradients (B, out, in))``, e.g. the LESS Adam transform.
GradTransform = Callable[[str, torch.Tensor], torch.Tensor]


class ProjectionSpec(BaseModel):
    """Which projection to use (a registered kind) and its size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = "kronecker"
    rank: int = Field(default=8, gt=0, description="Kronecker per-side rank (capped by layer dims).")
    dim: int = Field(default=1024, gt=0, description="Dense output dimension.")
    seed: int = Field(default=0, ge=0, description="Base seed; per-layer seeds derive from it.")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in PROJECTORS.names():
            raise ValueError(f"unknown projection kind {kind!r}; known: {PROJECTORS.names()}")
        return kind


def layer_seed(seed: int, layer_name: str) -> int:
    """A 63-bit seed derived from ``(seed, layer_name)``, stable across processes and machines."""
    digest = hashlib.blake2b(f"{seed}:{layer_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1)


def ordered_sum(items: Iterable[torch.Tensor]) -> torch.Tensor:
    """Left-to-right sum (fixed order, so results are reproducible)."""
    it = iter(items)
    total = next(it)
    for item in it:
        total = total + item
    return total


def rows_per_block(width: int) -> int:
    """Examples per chunk so that a chunk holds at most ``BLOCK_ELEMS`` entries of ``width`` each."""
    return max(1, BLOCK_ELEMS // width)


def _check_layers(layers: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """Validate ``name -> (in_features, out_features)`` and return it in sorted-name order."""
    if not layers:
        raise ConfigError("projection: `layers` is empty; select at least one linear layer")
    out: dict[str, tuple[int, int]] = {}
    for name in sorted(layers):
        shape = tuple(int(v) for v in layers[name])
        if len(shape) != 2 or min(shape) <= 0:
            raise ConfigError(
                f"projection: layer {name!r} needs (in_features, out_features) > 0, got {layers[name]!r}"
            )
        out[name] = (shape[0], shape[1])
    return out


def _fingerprint(spec: ProjectionSpec, layers: dict[str, tuple[int, int]], generator: str) -> str:
    payload = {
        "generator": generator,
        "spec": spec.model_dump(mode="json"),
        "layers": [[name, list(shape)] for name, shape in layers.items()],
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


class Projector(ABC):
    """Seeded projection of per-layer weight gradients; subclasses set ``kind`` and ``generator``.

    ``generator`` names how the random matrices are drawn and enters the fingerprint: bump it whenever
    the drawn values change.
    """

    kind: ClassVar[str]
    generator: ClassVar[str]

    def __init__(
        self, spec: ProjectionSpec, layers: dict[str, tuple[int, int]], device: str | torch.device = "cpu"
    ) -> None:
        self.spec = spec
        self.layers = _check_layers(layers)
        self.device = torch.device(device)
        self.fingerprint = _fingerprint(spec, self.layers, self.generator)
        self._digest = hashlib.blake2b(digest_size=16)

    @property
    def layer_names(self) -> list[str]:
        """Layer names in feature order (sorted)."""
        return list(self.layers)

    @property
    @abstractmethod
    def output_dim(self) -> int:
        """Feature dimension."""

    @abstractmethod
    def size(self) -> dict[str, int]:
        """The spec's size fields this kind uses, e.g. ``{"rank": 8}`` (for :meth:`describe`)."""

    @abstractmethod
    def project_layer(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        """One layer's part of the features from its full per-example gradients (B, out, in)."""

    @abstractmethod
    def combine(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Features (B, output_dim) from the per-layer parts, in layer order."""

    def kfac_layout(self) -> dict[str, dict[str, int]] | None:
        """Per layer ``{start, stop, r_out, r_in}`` of its feature block for K-FAC; None if unsupported."""
        return None

    def project(self, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        """Features (B, output_dim) float32 from full per-example gradients ``{name: (B, out, in)}``."""
        self._check_grads(grads)
        return self.combine([self.project_layer(name, grads[name]) for name in self.layers])

    def project_pairs(
        self,
        name: str,
        pairs: list[tuple[torch.Tensor, torch.Tensor]],
        tok_mask: torch.Tensor,
        transform: GradTransform | None = None,
        kfac: bool = False,
    ) -> tuple[torch.Tensor, KfacSums | None]:
        """One layer's part of the features from its (input x (B,T,in), output grad δ (B,T,out)) pairs,
        one pair per call of the layer; ``tok_mask`` (B,T,1) marks non-pad tokens.

        This default forms ``G = Σ_t δ_t x_tᵀ`` (then ``transform(name, G)``) a few examples at a time,
        so at most ``BLOCK_ELEMS`` gradient entries exist at once, and returns no K-FAC sums.
        """
        d_in, d_out = self.layers[name]
        rows = pairs[0][0].shape[0]
        step = rows_per_block(d_in * d_out)
        out = []
        for s in range(0, rows, step):
            m = tok_mask[s:s + step]
            grad = ordered_sum(torch.einsum("bto,bti->boi", d[s:s + step].float() * m, x[s:s + step].float())
                               for x, d in pairs)
            if transform is not None:
                grad = transform(name, grad)
            out.append(self.project_layer(name, grad))
        return (torch.cat(out) if len(out) > 1 else out[0]), None

    @property
    def matrix_digest(self) -> str:
        """blake2b of the generated matrices' bytes (detects RNG drift across workers)."""
        return self._digest.hexdigest()

    def describe(self) -> dict[str, object]:
        """Provenance record: kind, size, seed, output_dim, layers and fingerprints."""
        return {
            "kind": self.kind,
            **self.size(),
            "seed": self.spec.seed,
            "output_dim": self.output_dim,
            "layers": self.layer_names,
            "generator": self.generator,
            "fingerprint": self.fingerprint,
            "matrix_digest": self.matrix_digest,
        }

    def _hash_matrix(self, mat: torch.Tensor) -> None:
        self._digest.update(mat.numpy().tobytes())

    def _check_grads(self, grads: dict[str, torch.Tensor]) -> None:
        missing = [n for n in self.layers if n not in grads]
        if missing:
            raise ConfigError(f"projection: gradients missing for layers {missing}")
        for name, (d_in, d_out) in self.layers.items():
            if tuple(grads[name].shape[-2:]) != (d_out, d_in):
                raise ConfigError(
                    f"projection: gradient for layer {name!r} has shape {tuple(grads[name].shape)}, "
                    f"expected (B, {d_out}, {d_in})"
                )


PROJECTORS: Registry[type[Projector]] = Registry("projection kind", key=lambda cls: cls.kind)


def build_projector(
    spec: ProjectionSpec, layers: dict[str, tuple[int, int]], device: str | torch.device = "cpu"
) -> Projector:
    """Build the projector named by ``spec.kind`` for ``layers`` (name -> (in_features, out_features))."""
    return PROJECTORS.get(spec.kind)(spec, layers, device)
