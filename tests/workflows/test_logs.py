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


def test_library_noise_is_quiet_by_default_and_verbose_shows_it(monkeypatch, tmp_path, capsys):
    """HF progress bars ("Writing model shards", "Loading weights") stay out of the logs unless -v."""
    import os

    from operators.model.loading import load_causal_lm
    from operators.model.tiny_lm import TinyLMSpec, build_tiny_lm, save_checkpoint
    from transformers import PreTrainedTokenizerFast
    from workflows.assets import default_tokenizer_dir
    from workflows.logs import VERBOSE_ENV, quiet_libraries

    for key in (VERBOSE_ENV, "HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY"):
        monkeypatch.setenv(key, "x")  # recorded, so teardown restores whatever was there before
        monkeypatch.delenv(key)
    tok = PreTrainedTokenizerFast.from_pretrained(default_tokenizer_dir())
    spec = TinyLMSpec(hidden_size=16, intermediate_size=32, max_length=16, warmup_steps=0)
    model = build_tiny_lm(spec, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    capsys.readouterr()
    save_checkpoint(tmp_path / "m", model, tok, None, {})
    load_causal_lm(str(tmp_path / "m"))
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "Writing model" not in err
    assert hf_logging.is_progress_bar_enabled()  # restored after each quiet block

    monkeypatch.setenv(VERBOSE_ENV, "1")
    load_causal_lm(str(tmp_path / "m"))
    assert "Loading weights" in capsys.readouterr().err

    env = quiet_libraries(verbose=False)
    assert env["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and VERBOSE_ENV not in os.environ
    assert quiet_libraries(verbose=True) == {VERBOSE_ENV: "1"} and os.environ[VERBOSE_ENV] == "1"
