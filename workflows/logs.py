"""Structured logging: plain text for terminals, one JSON object per line for log pipelines.

Library noise (Hugging Face progress bars and advisories, Ray's start-up warnings) is off by default;
``influmix <command> -v`` shows it (:func:`quiet_libraries`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timezone

from operators.io.secrets import redact
from operators.model.quiet import VERBOSE_ENV  # an INFLUMIX_* variable: forwarded to actors


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("run_id", "shard_id", "stage"):
            if hasattr(record, key):
                payload[key] = getattr(record, key)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, sort_keys=True)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time (survives redirection and test capture)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class RedactingFilter(logging.Filter):
    """Masks URL passwords and secret environment values in every record (operators/io/secrets.py)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


#: Environment that keeps libraries quiet in this process and in the Ray workers it starts (they inherit it;
#: ``influmix submit`` forwards it to the job).
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}


def quiet_libraries(verbose: bool = False) -> dict[str, str]:
    """Silence library progress bars and advisories unless ``verbose`` (then ``INFLUMIX_VERBOSE=1``, which
    also keeps Ray's warnings: cluster/runtime.py). Returns the environment set, for forwarding to jobs."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        return {VERBOSE_ENV: "1"}
    os.environ.pop(VERBOSE_ENV, None)
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    import sys

    if "transformers" in sys.modules:  # imported already: its progress-bar switch was read at import
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    return dict(QUIET_ENV)


def configure_logging(fmt: str = "text", level: int = logging.INFO, verbose: bool = False) -> None:
    handler = _StderrHandler()
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    quiet_libraries(verbose)
    for noisy in ("botocore", "s3fs", "aiobotocore", "urllib3", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
