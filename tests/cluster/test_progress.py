"""Driver progress reporting: snapshots, sink, ETA, terminal bar and log lines."""

from __future__ import annotations

import io
import json
import logging

from cluster.progress import Progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_snapshot_counts_and_sink():
    seen: list[dict] = []
    p = Progress("featurize", total=4, already_done=1, interval_s=3600, sink=seen.append, stream=io.StringIO())
    p.shard_done(10)
    assert seen == []  # throttled by the interval
    p.shard_failed()  # failures report immediately
    p.shard_done(5)  # finishing the stage reports too
    snap = seen[-1]
    assert snap["done"] == 3 and snap["skipped"] == 1 and snap["failed"] == 1 and snap["examples"] == 15
    assert snap["eta_s"] == 0.0 and snap["examples_per_s"] > 0


def test_terminal_bar_and_json_lines(caplog):
    tty = _Tty()
    p = Progress("featurize", total=2, interval_s=0, stream=tty)
    p.shard_done(1)
    p.shard_done(1)
    assert "featurize: 100%" in tty.getvalue() and "2/2" in tty.getvalue()  # one tqdm bar
    with caplog.at_level(logging.INFO, logger="influmix.progress"):
        Progress("score", total=1, interval_s=0, stream=io.StringIO()).shard_done(3)
    line = caplog.records[-1].getMessage()
    assert json.loads(line.split("progress ", 1)[1])["stage"] == "score"
