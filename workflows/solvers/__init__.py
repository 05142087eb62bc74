"""Mixture solvers, chosen by name (``mixture.solver``, ``mixture.compare``); see base.py."""

from workflows.solvers.base import SOLVERS, MixtureProblem, SolveContext, Solver, SolverResult

# Built-in solvers: one import each registers it.
from workflows.solvers import tikmix_d, tikmix_d_paper, tikmix_m  # noqa: E402,F401

__all__ = ["SOLVERS", "MixtureProblem", "SolveContext", "Solver", "SolverResult"]
