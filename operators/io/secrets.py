"""Keep credentials out of logs, outputs and job metadata.

Credentials come only from the environment (``AWS_*``, ``RAY_AUTH_TOKEN`` ...) or the cluster's
identity (IAM role, Kubernetes secret); influmix never writes them. :func:`redact` masks URL userinfo
(``scheme://user:pass@host``) and the value of every secret-looking environment variable in a text.
"""

from __future__ import annotations

import os
import re

SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|ACCESS_KEY|API_KEY|_KEY_ID|AUTH",
                         re.IGNORECASE)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s:]+:[^/@\s]+@")
MASK = "***"
_MIN_SECRET_LEN = 6  # shorter values (e.g. "1", "true") are not worth masking and cause noise


def is_secret_name(name: str) -> bool:
    """True for environment variable names that usually hold credentials."""
    return bool(SECRET_NAME.search(name))


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if is_secret_name(k) and len(v) >= _MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def redact(text: str, environ: dict[str, str] | None = None) -> str:
    """``text`` with URL passwords and secret environment values replaced by ``***``."""
    out = _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    for value in secret_values(environ):
        out = out.replace(value, MASK)
    return out


def has_userinfo(url: str) -> bool:
    return bool(_USERINFO.search(url))
