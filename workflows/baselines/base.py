"""The baseline registry: baselines are :class:`workflows.solvers.base.Solver` subclasses too."""

from workflows.registry import Registry
from workflows.solvers.base import Solver

BASELINES: Registry[Solver] = Registry("baseline")
