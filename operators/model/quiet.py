"""Keep Hugging Face progress bars and advisories out of the logs unless ``INFLUMIX_VERBOSE`` is set."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

VERBOSE_ENV = "INFLUMIX_VERBOSE"


@contextmanager
def hf_quiet() -> Iterator[None]:
    """Inside the block: no transformers progress bars ("Loading weights", "Writing model shards") and only
    its errors; both settings are restored afterwards. A no-op with ``INFLUMIX_VERBOSE=1``
    (``influmix ... -v``)."""
    if os.environ.get(VERBOSE_ENV):
        yield
        return
    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
