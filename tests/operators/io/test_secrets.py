"""Credential redaction for logs, configs and job metadata."""

from __future__ import annotations

import logging

from operators.io.secrets import is_secret_name, redact


def test_redact_masks_url_passwords_and_secret_env_values():
    env = {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG", "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
           "HOME": "/home/user", "RAY_AUTH_TOKEN": "tok-123456"}
    text = ("endpoint http://minio:pa55word@10.0.0.1:9000 key AKIAIOSFODNN7EXAMPLE "
            "secret wJalrXUtnFEMI/K7MDENG token tok-123456 home /home/user")
    out = redact(text, env)
    for secret in ("pa55word", "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG", "tok-123456"):
        assert secret not in out
    assert "http://***@10.0.0.1:9000" in out and "/home/user" in out


def test_secret_names():
    assert all(is_secret_name(n) for n in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN",
                                           "RAY_AUTH_TOKEN", "HF_TOKEN", "DB_PASSWORD"))
    assert not any(is_secret_name(n) for n in ("INFLUMIX_OUTPUT", "HOME", "PATH", "AWS_DEFAULT_REGION"))


def test_log_handler_redacts(monkeypatch, capsys):
    from workflows.logs import configure_logging

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "super-secret-value-42")
    configure_logging("json")
    logging.getLogger("influmix.test").warning("connecting with %s to %s", "super-secret-value-42",
                                               "http://u:p4ss@host")
    err = capsys.readouterr().err
    assert "super-secret-value-42" not in err and "p4ss" not in err and "***" in err
