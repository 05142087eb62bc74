"""Ray Jobs submission with deterministic submission ids (re-submitting is a no-op)."""

from __future__ import annotations

import hashlib
import logging
import shlex
import time
from pathlib import Path
from typing import Any

from operators.errors import InfluMixError
from operators.io.secrets import is_secret_name

log = logging.getLogger(__name__)

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
DEFAULT_EXCLUDES = [".git", ".venv", "**/__pycache__", "influmix-out", "*.egg-info", ".pytest_cache",
                    ".env", ".env.*", ".aws", "*.pem", "*.key", "credentials*"]  # never ship secrets


class JobError(InfluMixError):
    """The Ray Jobs API rejected a request or could not be reached."""


def submission_id_for(name: str, config_hash: str, overrides: list[str], stamp: str | None = None) -> str:
    """Same config + overrides (+ schedule stamp) ⇒ same id ⇒ idempotent submission."""
    digest = hashlib.sha256(("\n".join([config_hash, *overrides])).encode()).hexdigest()[:12]
    parts = ["influmix", name, digest] + ([stamp] if stamp else [])
    return "-".join(p.replace("_", "-").replace(".", "-") for p in parts)


def project_root() -> Path | None:
    """The source checkout this module runs from, if any (shipped as the job's working_dir)."""
    root = Path(__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "influmix"' in pyproject.read_text():
        return root
    return None


def build_runtime_env(working_dir: str | None, env_vars: dict[str, str]) -> dict[str, Any]:
    """The job's runtime_env. It is readable by anyone with dashboard access, so credentials are refused."""
    secret = sorted(k for k in env_vars if is_secret_name(k))
    if secret:
        raise JobError(
            f"refusing to forward {secret} to the Ray job: a runtime_env is visible in the Ray dashboard and "
            "Jobs API. Give the cluster its own credentials (IAM role, Kubernetes secret, instance profile)")
    env: dict[str, Any] = {"env_vars": dict(env_vars)}
    if working_dir:
        env["working_dir"] = working_dir
        env["excludes"] = list(DEFAULT_EXCLUDES)
    return env


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # connection refused, bad URL, wrong port
        raise JobError(f"cannot reach the Ray Jobs API at {address}: {exc}") from exc


def submit(address: str, command: list[str], submission_id: str, runtime_env: dict[str, Any],
           metadata: dict[str, str] | None = None, entrypoint_num_cpus: float | None = None,
           entrypoint_num_gpus: float | None = None, agent_wait_s: float = 120.0) -> tuple[str, bool]:
    """Submit `command` as a Ray job. Returns (submission_id, created); an existing id is not resubmitted.
    A head whose job agent has not registered yet is retried for up to ``agent_wait_s`` seconds."""
    client = _client(address)
    try:
        info = client.get_job_info(submission_id)
    except Exception:
        info = None
    if info is not None:
        log.info("job %s already exists (%s); not resubmitting", submission_id, info.status)
        return submission_id, False
    deadline = time.monotonic() + agent_wait_s
    while True:
        try:
            job_id = client.submit_job(
                entrypoint=shlex.join(command), submission_id=submission_id, runtime_env=runtime_env,
                metadata=metadata or {}, entrypoint_num_cpus=entrypoint_num_cpus,
                entrypoint_num_gpus=entrypoint_num_gpus,
            )
            return job_id, True
        except Exception as exc:
            # A head node that has just started answers 500 "No available agent" until its job agent
            # registers; that is worth waiting for, anything else is not.
            if "No available agent" in str(exc) and time.monotonic() < deadline:
                log.warning("Ray Jobs API at %s has no job agent yet; retrying in 2 s", address)
                time.sleep(2.0)
                continue
            raise JobError(f"Ray Jobs API at {address} rejected submission {submission_id}: {exc}") from exc


def status(address: str, job_id: str) -> dict[str, Any]:
    client = _client(address)
    try:
        info = client.get_job_info(job_id)
    except Exception as exc:
        raise JobError(f"no job {job_id} at {address}: {exc}") from exc
    return {"submission_id": job_id, "status": getattr(info.status, "value", str(info.status)), "message": info.message,
            "entrypoint": info.entrypoint, "start_time": info.start_time, "end_time": info.end_time,
            "metadata": info.metadata or {}}


def logs(address: str, job_id: str) -> str:
    try:
        return _client(address).get_job_logs(job_id)
    except JobError:
        raise
    except Exception as exc:
        raise JobError(f"cannot read logs of job {job_id} at {address}: {exc}") from exc


def wait(address: str, job_id: str, timeout_s: float = 3600, poll_s: float = 2.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        info = status(address, job_id)
        if info["status"] in TERMINAL:
            return info
        if time.monotonic() > deadline:
            raise JobError(f"job {job_id} still {info['status']} after {timeout_s}s")
        time.sleep(poll_s)
