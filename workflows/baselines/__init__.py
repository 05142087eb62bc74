"""Baseline mixtures reported (and validated) beside the solvers: same interface as a solver
(workflows/solvers/base.py), chosen by name in ``mixture.baselines``. Adding one: a file here with a
``Solver`` subclass registered on ``BASELINES``, plus one import line below."""

from workflows.registry import Registry
from workflows.solvers.base import Solver

BASELINES: Registry[Solver] = Registry("baseline")

from workflows.baselines import dsir, proportional  # noqa: E402,F401

__all__ = ["BASELINES"]
