"""Runs submitted as Ray jobs through a head's dashboard (the Jobs API): `ipai submit SPEC --address http://HEAD:8265`.

The submitter creates the run record first, then submits the same driver command the background mode runs
(`python -m engine.cli submit SPEC --attach-run RUN`) as a job whose submission id is derived from the run
id, so the job id is on the run before the job exists. The job's runtime environment carries the spec (a
staging `working_dir`) and this checkout's packages (`py_modules`), so the head runs the submitter's code,
and the settings the run needs as environment variables.

Ray shows a job's runtime environment to anyone who can open the dashboard, so nothing secret goes in it: a
control-plane URL with a password is refused (the cluster hosts get the password from `~/.pgpass` or
`PGPASSWORD` instead) and the Vault key stays with the hosts (`IPAI_VAULT_KEY` or `~/.ipai/vault.key`).

Every failure of Ray's SDK (head unreachable, 401/403 from token authentication, a refused submission)
becomes one `ConfigError` or `IpaiError` with what to do next.

`ipai submit --wait` follows the job with `follow_run`: its logs and status until it ends, then the run's
record. A job that ends without its driver closing the run (it never started, or was killed) closes the run
as failed with the job's reason (`close_run`), rather than leaving it to the long start lease.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from psycopg.conninfo import conninfo_to_dict

from engine.controlplane import records
from engine.controlplane.db import Database
from engine.controlplane.settings import Settings
from engine.core.errors import ConfigError, IpaiError, LeaseLost

JOB_START_LEASE_S = 900.0
"""The lease a run gets when it is submitted as a job. The job may wait for its runtime environment (the
packages are unpacked on the head) before the driver starts renewing the lease every few seconds; with
the usual two minutes a reaper (a worker, the next submit) could fail a run whose job is merely pending."""
AGENT_WAIT_S = 60.0
"""How long a submission waits for the job agent of a head that has just started."""
PACKAGES = ("engine", "connectors", "layers")
"""This checkout's packages a job imports: shipped with every job so the head runs the submitter's version."""
EXCLUDES = ["__pycache__/", "*.pyc"]
_ROOT = Path(__file__).resolve().parents[2]
_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
"""Where Ray's job supervisor hands a job's driver its config; `metadata.job_submission_id` is the job id
(ray/dashboard/modules/job/job_supervisor.py, `_get_driver_env_vars`)."""


def is_jobs_address(address: str | None) -> bool:
    """True when `address` is a head's dashboard (the Jobs API), not a Ray cluster address."""
    return bool(address) and str(address).startswith(("http://", "https://"))


def submission_id(run_id: str) -> str:
    """The Ray job id of a run submitted by `ipai submit --address http://...`."""
    return f"ipai-{run_id}"


def current_job_id() -> str | None:
    """Return the Ray job (submission) id when this process is the driver of a job submitted through the
    Jobs API (by `ipai submit --address` or directly over REST), else None."""
    raw = os.environ.get(_JOB_CONFIG_ENV)
    if not raw:
        return None
    try:
        job_id = (json.loads(raw).get("metadata") or {}).get("job_submission_id")
    except (ValueError, AttributeError):
        return None
    return str(job_id) if job_id else None


def job_env(settings: Settings) -> dict[str, str]:
    """Return the environment variables a job needs; refuse settings that would put a secret in Ray's job info."""
    url = settings.database_url
    if not url:
        raise ConfigError("a Ray job needs a control-plane database the cluster can reach, and the embedded "
                          "PostgreSQL lives on this machine only: set IPAI_DATABASE_URL (or --database-url) to a "
                          "server the head can reach")
    try:
        params = conninfo_to_dict(url)
    except Exception:  # noqa: BLE001 - psycopg raises ProgrammingError; any unparsable URL is reported the same
        raise ConfigError("the control-plane URL (IPAI_DATABASE_URL or --database-url) cannot be parsed") from None
    if params.get("password") or params.get("sslpassword"):
        # Not even redacted: a key=value conninfo would slip past redact_url.
        raise ConfigError(
            "the control-plane URL carries a password, and the Ray dashboard shows every job's "
            "environment to whoever can open it: give the cluster hosts the password another way (a ~/.pgpass "
            "entry, or PGPASSWORD in the environment Ray was started with), keep it in ~/.pgpass here too, and "
            "pass the URL without it (--database-url postgresql://USER@HOST/DB)")
    env = {"IPAI_DATABASE_URL": url, "IPAI_LAKEHOUSE_URI": settings.lakehouse_uri, "IPAI_TENANT": settings.tenant,
           # Ray stops a job with SIGTERM and kills it 3 s later; SIGINT is the driver's Ctrl-C, which drains
           # the writes under way (up to 30 s) and records the run as cancelled.
           "RAY_JOB_STOP_SIGNAL": "SIGINT", "RAY_JOB_STOP_WAIT_TIME_S": "60"}
    # The operator's egress policy (engine/core/egress.py) goes with the run: the job's driver captures it for
    # every read task.
    for name in ("IPAI_DEV_MODE", "IPAI_EGRESS_ALLOW", "IPAI_SQLITE_ROOTS", "IPAI_SOURCES_IN_CONTROL_PLANE"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def lakehouse_warning(settings: Settings, address: str) -> str | None:
    """Say so when a remote head would write the lakehouse to a folder of its own disk, not this machine's."""
    host = urlsplit(address).hostname or ""
    if "://" in settings.lakehouse_uri or host in ("127.0.0.1", "localhost", "::1"):
        return None
    return (f"the lakehouse {settings.lakehouse_uri} is a folder: the cluster writes to that path on its own "
            "hosts; use an s3:// lakehouse (IPAI_LAKEHOUSE_URI) or a folder every host shares")


def _auth_headers() -> dict[str, str]:
    """The head's token as a bearer header, from where Ray itself looks: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH,
    ~/.ray/auth_token. Sent explicitly so that it does not depend on RAY_AUTH_MODE being set before Ray was
    imported."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
        token = path.read_text(encoding="utf-8").strip() if path.is_file() else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


@contextmanager
def _jobs_errors(address: str) -> Iterator[None]:
    """Turn the failures of Ray's job SDK into one message each, saying what to do."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as exc:
        what = "refused the token" if "Forbidden" in str(exc) or "invalid" in str(exc) else "wants a token"
        raise ConfigError(
            f"the Ray head at {address} {what} (token authentication): copy the head's ~/.ray/auth_token to this "
            "machine's ~/.ray/auth_token, or set RAY_AUTH_TOKEN") from None
    except (ConnectionError, requests.exceptions.ConnectionError, requests.exceptions.Timeout):
        raise ConfigError(
            f"cannot reach the Ray dashboard at {address}: is the head running, with its dashboard listening there "
            "(`ray start --head --dashboard-host=0.0.0.0`, port 8265 by default) and reachable from here?") from None
    except (RuntimeError, ValueError, requests.exceptions.RequestException) as exc:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise IpaiError(f"the Ray Jobs API at {address} answered: {first[:500]}") from None


@dataclass(frozen=True)
class JobOutcome:
    status: str
    """SUCCEEDED, FAILED or STOPPED."""
    message: str


def summary(job_id: str, outcome: JobOutcome) -> str:
    """Say why a job ended without its driver closing the run, in one line (Ray's message carries the log tail,
    which `ray job logs` shows in full)."""
    first = outcome.message.strip().splitlines()[0] if outcome.message.strip() else ""
    first = first.split(", last available logs")[0]
    text = f"Ray job {job_id} ended {outcome.status}" + (f": {first}" if first else "")
    if "exit code 127" in first:
        text += ("; the head found no `python` on its PATH: start Ray there with the platform's venv first on "
                 "PATH (as cluster.yaml does)")
    return f"{text} (`ray job logs {job_id}` shows its output)"


class Jobs:
    """The Jobs API of one Ray head."""

    def __init__(self, address: str) -> None:
        """Connect (and check the head answers, with our token) before anything is recorded."""
        from ray.job_submission import JobSubmissionClient

        # The SDK logs every package upload at INFO; what the user follows is the job's own status and logs.
        for name in ("ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self.address = address.rstrip("/")
        self._seen: dict[str, tuple[int, str]] = {}  # job id -> (log characters shown, last status shown)
        with _jobs_errors(self.address):
            self.client = JobSubmissionClient(self.address, headers=_auth_headers())

    def submit(self, spec_file: Path, *, run_id: str, settings: Settings, full_refresh: bool,
               metadata: dict[str, str]) -> str:
        """Submit the run's driver as a job; return its id (`submission_id(run_id)`)."""
        env = job_env(settings)
        job_id = submission_id(run_id)
        command = ["python", "-m", "engine.cli", "submit", spec_file.name, "--attach-run", run_id]
        if full_refresh:
            command.append("--full-refresh")
        with tempfile.TemporaryDirectory(prefix="ipai-job-") as staging:
            # Only the spec goes in the working_dir: the SDK uploads it when submit_job is called.
            shutil.copyfile(spec_file, Path(staging) / spec_file.name)
            runtime_env: dict[str, Any] = {
                "working_dir": staging,
                "py_modules": [str(_ROOT / name) for name in PACKAGES],
                "excludes": EXCLUDES,
                "env_vars": env,
            }
            deadline = time.monotonic() + AGENT_WAIT_S
            with _jobs_errors(self.address):
                while True:
                    try:
                        return str(self.client.submit_job(entrypoint=shlex.join(command), submission_id=job_id,
                                                          runtime_env=runtime_env, metadata=metadata))
                    except RuntimeError as exc:
                        # A head that has just started answers before its job agent has registered (HTTP 500,
                        # "No available agent to submit job, please try again later"); nothing was created.
                        if "No available agent" not in str(exc) or time.monotonic() > deadline:
                            raise
                        time.sleep(1.0)

    def follow(self, job_id: str, *, on_logs: Callable[[str], None], on_status: Callable[[str], None],
               poll_s: float = 1.0) -> JobOutcome:
        """Poll the job until it ends, passing on new log text and each status change (again after an
        interruption: what was shown already is not repeated)."""
        seen, last = self._seen.get(job_id, (0, ""))
        with _jobs_errors(self.address):
            while True:
                status = self.client.get_job_status(job_id)
                # Logs are read after the status, so a terminal status is followed by the whole tail.
                logs = self.client.get_job_logs(job_id)
                if len(logs) > seen:
                    on_logs(logs[seen:])
                    seen = len(logs)
                if str(status.value) != last:
                    last = str(status.value)
                    on_status(last)
                self._seen[job_id] = (seen, last)
                if status.is_terminal():
                    info = self.client.get_job_info(job_id)
                    return JobOutcome(str(status.value), info.message or "")
                time.sleep(poll_s)

    def stop(self, job_id: str) -> None:
        """Ask Ray to stop the job (SIGINT to its driver: see `job_env`)."""
        with _jobs_errors(self.address):
            self.client.stop_job(job_id)


def follow_run(jobs: Jobs, job_id: str, run_id: str, db: Database, *, on_logs: Callable[[str], None],
               on_status: Callable[[str], None], on_stopping: Callable[[], None]) -> dict[str, Any]:
    """Follow the run's job until it ends; return the run's record, closed.

    A first Ctrl-C stops the job (`on_stopping` is called first) and follows it to its end; a second one
    raises KeyboardInterrupt to the caller. A job that ended without its driver closing the run (it never
    started: runtime environment, no `python` on the head; or it was killed) has the run closed as failed with
    the job's reason now, rather than when the long start lease runs out."""
    try:
        outcome = jobs.follow(job_id, on_logs=on_logs, on_status=on_status)
    except KeyboardInterrupt:
        on_stopping()
        jobs.stop(job_id)
        outcome = jobs.follow(job_id, on_logs=on_logs, on_status=on_status)
    with db.connect() as conn:
        run = records.get_run(conn, run_id)
    if run["status"] == "running":
        close_run(db, run_id, summary(job_id, outcome))
        with db.connect() as conn:
            run = records.get_run(conn, run_id)
    return run


def close_run(db: Database, run_id: str, error: str) -> None:
    """Mark a job-submitted run failed whose driver never took it over."""
    with db.connect() as conn:
        try:
            records.finish_run(conn, run_id, status="failed", error=error)
            records.log(conn, run_id, "error", "run.failed", error)
        except LeaseLost:
            pass  # the driver (or a reaper) closed it after all; its verdict stands
