"""Structured logs: one JSON object per line with level, logger and message."""

from __future__ import annotations

import json
import logging

from workflows.logs import JsonFormatter, configure_logging


def test_json_formatter_emits_parseable_records():
    record = logging.LogRecord("influmix.x", logging.WARNING, __file__, 1, "shard %s failed", ("s1",), None)
    record.run_id = "r1"
    data = json.loads(JsonFormatter().format(record))
    assert data["level"] == "warning" and data["logger"] == "influmix.x"
    assert data["msg"] == "shard s1 failed" and data["run_id"] == "r1" and "ts" in data


def test_configure_logging_json_mode(capsys):
    configure_logging("json")
    logging.getLogger("influmix.test").info("hello %d", 3)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert json.loads(line)["msg"] == "hello 3"
    configure_logging("text")
