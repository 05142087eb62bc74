"""Gradient projections, chosen by ``ProjectionSpec.kind`` from the ``PROJECTORS`` registry; see base.py."""

from operators.features.projectors.base import PROJECTORS, ProjectionSpec, Projector, build_projector

# Built-in projections: one import each registers it.
from operators.features.projectors import kronecker  # noqa: E402,F401
from operators.features.projectors import dense  # noqa: E402,F401

__all__ = ["PROJECTORS", "ProjectionSpec", "Projector", "build_projector"]
