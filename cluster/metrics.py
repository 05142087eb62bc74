"""Custom Ray metrics (exported as ray_influmix_* to Prometheus / the Ray dashboard)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import ray

PREFIX = "influmix_"


log = logging.getLogger(__name__)


def _never_fail(method: Callable) -> Callable:
    """Metrics are best effort: a metrics error is logged, never allowed to fail a shard."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            method(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            log.warning("metrics update %s failed: %s", method.__name__, exc)

    return wrapper


class _Noop:
    def inc(self, *_: Any, **__: Any) -> None: ...
    def set(self, *_: Any, **__: Any) -> None: ...


def _metric(kind: str, name: str, description: str, tag_keys: tuple[str, ...], **kw: Any) -> Any:
    if not ray.is_initialized():
        return _Noop()
    from ray.util import metrics

    cls = {"counter": metrics.Counter, "gauge": metrics.Gauge}[kind]
    return cls(PREFIX + name, description=description, tag_keys=tag_keys, **kw)


class WorkerMetrics:
    """Per-actor counters: examples, tokens, shards, failures; throughput of the last shard."""

    def __init__(self, run_id: str, worker: str) -> None:
        tags = ("run_id", "worker", "role", "domain")
        self.examples = _metric("counter", "examples", "examples featurized", tags)
        self.tokens = _metric("counter", "tokens", "tokens featurized", tags)
        self.shards = _metric("counter", "shards_done", "shards completed", ("run_id", "worker"))
        self.failures = _metric("counter", "shard_failures", "shard attempts that failed",
                                ("run_id", "worker", "error"))
        self.throughput = _metric("gauge", "worker_examples_per_second", "examples/s of the last shard",
                                  ("run_id", "worker"))
        self.base = {"run_id": run_id, "worker": worker}

    @_never_fail
    def batch(self, role: str, domains: list[str], n_tokens: Any) -> None:
        per: dict[str, list[int]] = {}
        for d, n in zip(domains, list(n_tokens)):
            per.setdefault(d, []).append(int(n))
        for d, toks in per.items():
            tags = {**self.base, "role": role, "domain": d}
            self.examples.inc(len(toks), tags=tags)
            if sum(toks) > 0:  # Ray counters reject non-positive increments
                self.tokens.inc(sum(toks), tags=tags)

    @_never_fail
    def shard_done(self, n_examples: int, seconds: float) -> None:
        self.shards.inc(1, tags=self.base)
        if seconds > 0:
            self.throughput.set(n_examples / seconds, tags=self.base)

    @_never_fail
    def shard_failed(self, error: str) -> None:
        self.failures.inc(1, tags={**self.base, "error": error[:60]})


class DriverMetrics:
    """Driver gauges: shard progress, throughput, ETA and the resulting domain weights."""

    def __init__(self, run_id: str) -> None:
        self.tags = {"run_id": run_id}
        self.total = _metric("gauge", "shards_total", "shards in the plan", ("run_id", "stage"))
        self.done = _metric("gauge", "shards_completed", "shards completed", ("run_id", "stage"))
        self.failed = _metric("gauge", "shards_failed", "shards failed for good", ("run_id", "stage"))
        self.rate = _metric("gauge", "examples_per_second", "run throughput", ("run_id", "stage"))
        self.eta = _metric("gauge", "eta_seconds", "estimated time to finish the stage", ("run_id", "stage"))
        self.weight = _metric("gauge", "domain_weight", "mixture weight per domain", ("run_id", "domain"))

    @_never_fail
    def progress(self, stage: str, total: int, done: int, failed: int, rate: float, eta: float) -> None:
        tags = {**self.tags, "stage": stage}
        self.total.set(total, tags=tags)
        self.done.set(done, tags=tags)
        self.failed.set(failed, tags=tags)
        self.rate.set(rate, tags=tags)
        self.eta.set(eta, tags=tags)

    @_never_fail
    def weights(self, weights: dict[str, float]) -> None:
        for domain, w in weights.items():
            self.weight.set(w, tags={**self.tags, "domain": domain})
