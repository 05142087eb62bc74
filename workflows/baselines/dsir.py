"""DSIR-style hashed n-gram importance mixture, computed from the same target sets in the same run.

Bag-of-n-gram models of the target (influence split, mixed by target weight) and of the raw pool give
every pool example a length-normalised log importance (operators/mixture/ngram.py). A domain's weight is its
share of importance mass, Σ_{x∈k} n_x·exp(imp_x) over all domains, where n_x counts x's n-grams: what
importance resampling of the pool would draw from each domain. Two map passes over the corpus shards
on Ray (counts, then per-domain log-sum-exp of importance), so only (buckets,) and (K,) arrays reach
the driver. The unbounded answer is kept in the feature datastore, keyed by the shards it read (their
datastore keys), the targets and their weights, the domains and the options, so an analysis run on the
same data (another β, bootstrap, validation setting) does not read the corpus text again.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import logsumexp

from operators.io import storage
from operators.mixture.simplex import project_bounded_simplex
from operators.mixture.ngram import example_importance, log_importance, ngram_buckets, ngram_counts
from cluster.parallel import parallel_map
from workflows.baselines.base import BASELINES
from workflows.jobs.examples import ExampleSource, read_task_rows
from workflows.run.keys import digest
from workflows.run.plan import Plan
from workflows.solvers.base import MixtureProblem, SolveContext, Solver, SolverResult


class _ShardPass:
    """Picklable per-shard job: pass 1 returns n-gram counts, pass 2 per-domain log importance mass."""

    def __init__(self, examples: ExampleSource, buckets: int, log_ratio: np.ndarray | None, domains: list[str]):
        self.examples, self.buckets, self.log_ratio, self.domains = examples, buckets, log_ratio, domains

    def __call__(self, tasks: list, device: str) -> list:
        out = []
        for task in tasks:
            table = read_task_rows(self.examples, task)
            texts = table.column("text").to_pylist()
            if self.log_ratio is None:
                out.append(ngram_counts(texts, self.buckets))
                continue
            imp = example_importance(texts, self.log_ratio)
            sizes = np.array([max(1, ngram_buckets(t, self.buckets).size) for t in texts], dtype=np.float64)
            doms = np.asarray(table.column("domain").to_pylist(), dtype=object)
            mass = np.full(len(self.domains), -np.inf)
            for i, d in enumerate(self.domains):
                sel = doms == d
                if sel.any():
                    mass[i] = float(logsumexp(imp[sel] + np.log(sizes[sel])))
            out.append(mass)
        return out


@BASELINES.register
class Dsir(Solver):
    name = "dsir"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        buckets: int = Field(default=10_000, ge=16, description="hash bins of the n-gram models")
        smoothing: float = Field(default=1.0, gt=0, description="add-k smoothing of both models")
        local_below_bytes: int = Field(default=256 * 2**20, ge=0, description=(
            "run both passes in the driver when the corpus shards total fewer bytes (Ray task start-up "
            "costs more than hashing a small corpus)"))

    def cache_uri(self, plan: Plan, problem: MixtureProblem) -> str | None:
        """Where this answer is kept in the datastore (None for plans without one)."""
        if not plan.store:
            return None
        key = digest({"corpus": sorted(t.key or t.shard_id for t in plan.corpus_tasks()),
                      "targets": {t: sorted(s.key or s.shard_id for s in plan.target_tasks(t)) for t in problem.targets},
                      "weights": [round(float(x), 12) for x in problem.target_weights],
                      "domains": list(problem.domains), "options": self.options.model_dump(mode="json")})
        return storage.join(plan.store, "baselines", f"dsir-{key}.json")

    def solve(self, problem: MixtureProblem, ctx: SolveContext | None = None) -> SolverResult:
        if ctx is None:
            raise ValueError("the dsir baseline reads the corpus: it needs a SolveContext")
        cache = self.cache_uri(ctx.plan, problem)
        spec = ctx.examples.storage
        if cache and storage.exists(cache, spec):
            unbounded = storage.read_json(cache, spec)["unbounded"]
            w = np.array([unbounded[d] for d in problem.domains], dtype=np.float64)
            return self._result(problem, w, cached=True)
        w = self._unbounded(problem, ctx)
        if cache:
            storage.write_json_atomic(cache, {"unbounded": dict(zip(problem.domains, w.tolist())),
                                              "buckets": self.options.buckets}, spec)
        return self._result(problem, w, cached=False)

    def _result(self, problem: MixtureProblem, w: np.ndarray, cached: bool) -> SolverResult:
        return SolverResult(project_bounded_simplex(w, problem.lower, problem.upper),
                            {"buckets": self.options.buckets, "from_datastore": cached,
                             "unbounded": dict(zip(problem.domains, w.round(6).tolist()))})

    def _unbounded(self, problem: MixtureProblem, ctx: SolveContext) -> np.ndarray:
        examples, plan, b = ctx.examples, ctx.plan, self.options.buckets
        target, n_target = np.zeros(b), 0.0
        for t, lam in zip(problem.targets, problem.target_weights):
            counts = sum((ngram_counts(read_task_rows(examples, task).column("text").to_pylist(), b)
                          for task in plan.target_tasks(t)), np.zeros(b))
            target += lam * counts / max(counts.sum(), 1.0)
            n_target += counts.sum()
        tasks = plan.corpus_tasks()
        small = sum(t.size_bytes or 0 for t in tasks) < self.options.local_below_bytes

        def run(job: _ShardPass) -> list:
            return job(tasks, "cpu") if small else parallel_map(job, tasks, ctx.layout)

        raw = np.sum(run(_ShardPass(examples, b, None, problem.domains)), axis=0)
        ratio = log_importance(target * n_target, raw, self.options.smoothing)  # weighted, real count
        masses = np.array(run(_ShardPass(examples, b, ratio, problem.domains)))
        log_mass = logsumexp(masses, axis=0)
        return np.exp(log_mass - logsumexp(log_mass))
