"""Driver-side progress: one tqdm bar on a terminal (periodic log lines when not a TTY) plus progress.json."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable

log = logging.getLogger("influmix.progress")


class Progress:
    """Tracks completed/failed shards and examples; reports at most every `interval_s` seconds."""

    def __init__(self, stage: str, total: int, already_done: int = 0, interval_s: float = 5.0,
                 sink: Callable[[dict], None] | None = None, stream=None) -> None:
        self.stage = stage
        self.total = total
        self.done = already_done
        self.skipped = already_done
        self.failed = 0
        self.examples = 0
        self.interval_s = interval_s
        self.sink = sink
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.monotonic()
        self._last = self.started  # first report after one interval (or when forced/finished)
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar = None

    def shard_done(self, n_examples: int) -> None:
        self.done += 1
        self.examples += n_examples
        self.report()

    def shard_failed(self) -> None:
        self.failed += 1
        self.report(force=True)

    def snapshot(self) -> dict:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        processed = self.done - self.skipped
        remaining = self.total - self.done - self.failed
        rate_shards = processed / elapsed
        return {
            "stage": self.stage, "total": self.total, "done": self.done, "skipped": self.skipped,
            "failed": self.failed, "examples": self.examples, "elapsed_s": round(elapsed, 2),
            "examples_per_s": round(self.examples / elapsed, 3),
            "eta_s": round(remaining / rate_shards, 1) if rate_shards > 0 else None,
        }

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        finished = self.done + self.failed >= self.total
        if not (force or finished or now - self._last >= self.interval_s):
            return
        self._last = now
        snap = self.snapshot()
        if self.sink is not None:
            self.sink(snap)
        if self._tty:
            self._draw(snap, finished)
        else:
            log.info("progress %s", json.dumps(snap, sort_keys=True))

    def _draw(self, snap: dict, finished: bool) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=self.total, initial=self.skipped, desc=self.stage, unit="shard", file=self.stream,
                             dynamic_ncols=True, leave=True)
        self._bar.n = self.done + self.failed
        self._bar.set_postfix({"ex/s": f"{snap['examples_per_s']:.1f}", "failed": self.failed}, refresh=False)
        self._bar.refresh()
        if finished:
            self._bar.close()
