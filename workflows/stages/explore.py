"""Exploration candidates for validation, by name (``mixture.validation.explore.generators``).

Every candidate derived from first-order influence shares its ranking of domains; when that ranking is
wrong for a whole stage, validation needs mixtures with other rankings to repair it. Generators:

* ``dirichlet``: RegMix-style Dirichlet mixtures around the fixed prior (seeded, inside the bounds);
* ``heavy``: one domain-heavy mixture (``heavy_share`` on it, the rest by the prior) per domain with
  any positive evidence (a positive score or a positive upper end of its bootstrap CI);
* ``per_target``: with several target sets, the primary solver's answer for each target alone.

A second round measures the mixtures a surrogate fitted on every first-round probe predicts best
(:func:`surrogate_round`, operators/mixture/surrogate.py) and the primary solver's answer on multi-step
influence: the domains' effects read off the first-round probe trajectories and carried to the stage
horizon (:func:`trajectory_round`, operators/influence/trajectory.py), which repairs first-order
influence where a domain saturates or keeps paying over the stage. Adding a generator: a class with ``name``
and ``generate`` here, registered with ``@EXPLORERS.register``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from operators.influence.group import spearman
from operators.influence.trajectory import anchor_to_first_order, trajectory_influence
from operators.mixture.explore import dirichlet_around, far_enough, heavy_mixture, positive_evidence
from operators.mixture.surrogate import propose, proposal_intervals
from operators.registry import Registry
from workflows.config import ExploreSpec
from workflows.solvers import SOLVERS, MixtureProblem

Candidates = dict[str, tuple[np.ndarray, str]]


@dataclass(frozen=True)
class ExploreInput:
    """What a generator may use: the problem, the solved mixtures, the score CI's upper ends (or None),
    the primary solver's name, the solvers' configured options and a seed."""

    problem: MixtureProblem
    spec: ExploreSpec
    primary: str
    options: dict
    score_high: np.ndarray | None = None
    seed: int = 0


class Explorer(ABC):
    name: ClassVar[str]

    @abstractmethod
    def generate(self, inp: ExploreInput) -> Candidates:
        """name → (weights, where it came from)."""


EXPLORERS: Registry[type[Explorer]] = Registry("exploration generator", key=lambda cls: cls.name)


@EXPLORERS.register
class DirichletExplorer(Explorer):
    name = "dirichlet"

    def generate(self, inp: ExploreInput) -> Candidates:
        p = inp.problem
        # around the fixed prior, not the moving reference: the same exploration every refresh of a
        # checkpoint, so its probes are reused from the probe cache
        W = dirichlet_around(p.prior, inp.spec.dirichlet, inp.seed, p.lower, p.upper, inp.spec.concentrations)
        return {f"explore:dirichlet{i}": (w, "exploration: Dirichlet around the prior") for i, w in enumerate(W)}


@EXPLORERS.register
class HeavyExplorer(Explorer):
    name = "heavy"

    def generate(self, inp: ExploreInput) -> Candidates:
        p = inp.problem
        evidence = positive_evidence(p.scores, inp.score_high)
        key = inp.score_high if inp.score_high is not None else p.scores
        order = [k for k in np.argsort(-np.asarray(key), kind="stable") if evidence[k]][: inp.spec.heavy_max]
        return {f"explore:heavy:{p.domains[k]}": (
            heavy_mixture(p.prior, int(k), inp.spec.heavy_share, p.lower, p.upper),
            f"exploration: {inp.spec.heavy_share:g} on {p.domains[k]} (positive evidence)") for k in order}


@EXPLORERS.register
class PerTargetExplorer(Explorer):
    name = "per_target"

    def generate(self, inp: ExploreInput) -> Candidates:
        p = inp.problem
        if len(p.targets) < 2:
            return {}
        solver = SOLVERS.configured(inp.primary, inp.options).bootstrap_solver(inp.options)
        out: Candidates = {}
        for v, target in enumerate(p.targets):
            alone = replace(p, target_weights=np.eye(len(p.targets))[v])
            out[f"explore:target:{target}"] = (solver.solve(alone).weights, f"exploration: {solver.name} for {target} alone")
        return out


def exploration_candidates(inp: ExploreInput, existing: Candidates) -> Candidates:
    """Every configured generator's mixtures, without those within ``min_l1`` of an existing candidate or
    of an earlier exploration mixture."""
    out: Candidates = {}
    measured = [w for w, _ in existing.values()]
    for name in inp.spec.generators:
        for cname, (w, source) in EXPLORERS.get(name)().generate(inp).items():
            if len(far_enough(w[None, :], np.array(measured), inp.spec.min_l1)):
                out[cname] = (w, source)
                measured.append(w)
    return out


def _propose_options(inp: ExploreInput) -> dict:
    """The surrogate's settings, shared by its proposals and their resampled refits."""
    return {"kappa": inp.spec.surrogate_kappa, "min_cv_r2": inp.spec.surrogate_min_cv_r2,
            "min_l1": inp.spec.min_l1, "domain_names": inp.problem.domains}


def surrogate_round(inp: ExploreInput, W: np.ndarray, gains: np.ndarray) -> tuple[Candidates, dict]:
    """Mixtures a surrogate fitted on (W, measured gains) predicts best, and its report."""
    p = inp.problem
    X, report = propose(W, gains, p.scores, p.lower, p.upper, inp.spec.surrogate, seed=inp.seed,
                        **_propose_options(inp))
    return {f"explore:surrogate{i}": (w, "exploration: surrogate proposal (round 2)") for i, w in enumerate(X)}, report


def surrogate_weight_ci(inp: ExploreInput, W: np.ndarray, gain_reps: np.ndarray, proposed: Candidates,
                        confidence: float) -> dict:
    """Per surrogate proposal, the interval of its weights over refits on resampled first-round gains
    (``gain_reps`` (B, M), operators.mixture.surrogate.proposal_intervals), keyed by candidate name."""
    if not proposed or not len(gain_reps):
        return {}
    p = inp.problem
    ci = proposal_intervals(W, gain_reps, p.scores, p.lower, p.upper, np.array([w for w, _ in proposed.values()]),
                            confidence=confidence, seed=inp.seed, **_propose_options(inp))
    out: dict = {"replicates": ci["replicates"], "of": ci["of"], "confidence": confidence, "proposals": {}}
    if ci["replicates"]:
        for i, name in enumerate(proposed):
            out["proposals"][name] = {
                "low": dict(zip(p.domains, ci["low"][i].tolist())),
                "high": dict(zip(p.domains, ci["high"][i].tolist())),
                "median_l1_shift": float(ci["median_l1_shift"][i])}
    return out


def trajectory_round(inp: ExploreInput, W: np.ndarray, per_target: np.ndarray, coef: np.ndarray,
                     horizon_steps: float) -> tuple[Candidates, dict]:
    """The primary solver's answer on multi-step influence: ``per_target`` (M, S, P, V) first-round loss
    changes of the mixtures ``W`` (M, K) along their probes, extrapolated to the stage horizon by ``coef``;
    the solver sees that matrix and its bootstrap standard errors in place of first-order influence (so
    shrinkage and the target balance apply as usual). Returns the candidate and a report section."""
    p = inp.problem
    if not inp.spec.trajectory:
        return {}, {"fitted": False, "reason": "explore.trajectory = false"}
    if W.shape[0] < p.gi.shape[0] + 2:
        return {}, {"fitted": False, "reason": f"{W.shape[0]} probed mixtures for {p.gi.shape[0]} domains (need K + 2)"}
    if inp.spec.trajectory_horizon == "probe":  # the effects measured at the probe's last point
        coef, horizon_steps = np.eye(per_target.shape[2])[-1], float("nan")
    fit = trajectory_influence(W, per_target, coef, seed=inp.seed)
    anchored, anchor = anchor_to_first_order(fit["gi"], fit["se"], p.gi_normalized)
    multi = replace(p.with_gi(anchored, None), shrinkage="none")  # already evidence-weighted (anchored)
    solver = SOLVERS.configured(inp.primary, inp.options).bootstrap_solver(inp.options)
    w = solver.solve(multi).weights
    first, later = p.scores, multi.scores
    report = {"fitted": True, "solver": solver.name, "mixtures": int(W.shape[0]),
              "horizon": inp.spec.trajectory_horizon,
              "horizon_steps": None if inp.spec.trajectory_horizon == "probe" else float(horizon_steps),
              "influence": {d: row for d, row in zip(p.domains, fit["gi"].tolist())},
              "se": {d: row for d, row in zip(p.domains, fit["se"].tolist())},
              "fit_r2_at_points": fit["r2"].tolist(),
              "anchored": {d: row for d, row in zip(p.domains, anchored.tolist())},
              "anchor": anchor,
              "influence_at_points": {d: fit["at_points"][:, k, :].tolist() for k, d in enumerate(p.domains)},
              "scores": dict(zip(p.domains, later.tolist())),
              "first_order_scores": dict(zip(p.domains, first.tolist())),
              "rank_correlation_with_first_order": spearman(first, later),
              "weights": dict(zip(p.domains, w.tolist()))}
    return {"explore:multi_step": (w, "exploration: primary solver on multi-step influence (probe trajectories "
                                      "extrapolated to the stage)")}, report
