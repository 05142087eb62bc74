"""Baseline mixtures reported (and validated) beside the solvers: same interface as a solver
(workflows/solvers/base.py), chosen by name in ``mixture.baselines``. Adding one: a file here with a
``Solver`` subclass registered on ``BASELINES`` (workflows/baselines/base.py), plus one import line below."""

from workflows.baselines.base import BASELINES

from workflows.baselines import dsir, proportional  # noqa: E402,F401

__all__ = ["BASELINES"]
