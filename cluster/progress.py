"""Driver-side progress: a terminal bar (or periodic log lines when not a TTY) plus progress.json."""

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
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\r[{self.stage}] |{bar}| {self.done}/{self.total} shards "
                              f"{snap['examples_per_s']:.1f} ex/s eta {snap['eta_s']}s ")
            if finished:
                self.stream.write("\n")
            self.stream.flush()
        else:
            log.info("progress %s", json.dumps(snap, sort_keys=True))
