"""Runs submitted as Ray jobs: `ipai submit --address http://HEAD:8265` and a plain REST submission, against a
real local Ray head with its dashboard (its own cluster, home and temp folder, apart from the session's Ray)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest

from engine.run import localray
from connectors.specload import parse_spec
from tests.support.cli import base_env, ipai as run_ipai
from tests.support.truth import bronze_postgres, bronze_table, source_rows

pytestmark = pytest.mark.integration  # starts its own Ray head (not the session's ray_cluster)

SPEC = """\
name: {name}
source_type: sample
source:
  seed: 3
  days: 30
  customers: 500
  orders: 3000
  partition_rows: 3000
streams: [{{name: orders}}]
"""
VENV_BIN = str(Path(sys.executable).parent)


class Head:
    def __init__(self, home: Path, url: str, token: str) -> None:
        self.home, self.url, self.token = home, url, token

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    """A Ray head with the dashboard, in token mode, whose token lives under a temp HOME."""
    home = tmp_path_factory.mktemp("rayhome")
    # Made here: with RAY_AUTH_MODE set (as the session's own Ray leaves it), `ray start` will not make one.
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    with pytest.MonkeyPatch.context() as mp:
        # Read by `ray start` and inherited by the head's processes: the token is read from this HOME, and a
        # job's `python` / `ipai` are this venv's (on a cluster, cluster.yaml puts the platform's venv on PATH).
        mp.setenv("HOME", str(home))
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("PATH", f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        mp.delenv("RAY_ADDRESS", raising=False)
        # `ipai ray start`'s own head: free ports throughout, its own temp folder, stopped alone.
        url = localray.start(home / "ipai", dashboard_port=_free_port(), num_cpus=2).dashboard_url
    try:
        ready = Head(home, url, (home / ".ray" / "auth_token").read_text().strip())
        deadline = time.monotonic() + 90
        while True:  # the dashboard answers before its job agent does
            try:
                if httpx.get(f"{ready.url}/api/jobs/", headers=ready.headers, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the Ray head's Jobs API did not come up"
            time.sleep(0.5)
        yield ready
    finally:
        localray.stop(home / "ipai")


def head_env(settings, head: Head) -> dict[str, str]:
    """An `ipai` environment for the head: its HOME (where the Ray token is), none of the session's Ray."""
    env = base_env(drop=("IPAI_", "RAY_"))
    env.update(HOME=str(head.home), IPAI_HOME=str(settings.home), IPAI_LAKEHOUSE_URI=settings.lakehouse_uri,
               IPAI_DATABASE_URL=settings.database_url)
    return env


# Each test reads the exit code itself; a run through a Ray job takes longer than one on the session's Ray.
ipai = partial(run_ipai, check=False, timeout=300)


def write_spec(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SPEC.format(name=name))
    return path


def run_rows(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute("select id::text, status, ray_job_id, error from connector_runs").fetchall()


def test_submit_to_the_jobs_api_runs_the_sync_as_a_ray_job(tmp_path, settings, head):
    env = head_env(settings, head)
    env["IPAI_VAULT_KEY"] = "vault-key-that-must-stay-home"
    spec_path = write_spec(tmp_path, "jobs")
    done = ipai("submit", str(spec_path), "--address", head.url, "--wait", env=env)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr

    [(run_id, status, job_id, error)] = run_rows(settings.database_url)
    assert (status, error) == ("succeeded", None)
    assert job_id == f"ipai-{run_id}"
    assert f"run {run_id} submitted as Ray job {job_id}" in done.stdout
    assert f"run {run_id} succeeded on Ray job {job_id}" in done.stdout
    spec = parse_spec(spec_path.read_text())
    truth = source_rows(spec, "orders")
    assert bronze_postgres(settings.database_url, bronze_table(spec, "orders")).num_rows == truth.num_rows

    [listed] = [json.loads(line) for line in ipai("runs", "--json", env=env).stdout.splitlines()]
    assert (listed["id"], listed["ray_job_id"]) == (run_id, job_id)
    assert job_id in ipai("runs", env=env).stdout

    # What the dashboard shows of the job: the submitter's packages and settings, never the Vault key.
    info = httpx.get(f"{head.url}/api/jobs/{job_id}", headers=head.headers, timeout=10).json()
    assert info["status"] == "SUCCEEDED" and info["metadata"]["ipai_run_id"] == run_id
    assert info["runtime_env"]["env_vars"]["IPAI_DATABASE_URL"] == settings.database_url
    assert len(info["runtime_env"]["py_modules"]) == 3  # engine, connectors, layers as uploaded from here
    assert "vault-key-that-must-stay-home" not in json.dumps(info)


def test_a_job_posted_to_the_rest_api_records_its_id_on_the_run(tmp_path, settings, head):
    spec_path = write_spec(tmp_path, "rest")
    # As the README's curl: the platform is installed on the head, the spec is a path there.
    body = {"entrypoint": f"ipai submit {spec_path} --wait",
            "runtime_env": {"env_vars": {"IPAI_DATABASE_URL": settings.database_url,
                                         "IPAI_LAKEHOUSE_URI": settings.lakehouse_uri}}}
    posted = httpx.post(f"{head.url}/api/jobs/", json=body, headers=head.headers, timeout=30)
    assert posted.status_code == 200, posted.text
    job_id = posted.json()["submission_id"]
    deadline = time.monotonic() + 240
    while True:
        info = httpx.get(f"{head.url}/api/jobs/{job_id}", headers=head.headers, timeout=10).json()
        if info["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        assert time.monotonic() < deadline, info
        time.sleep(1)
    logs = httpx.get(f"{head.url}/api/jobs/{job_id}/logs", headers=head.headers, timeout=10).json()["logs"]
    assert info["status"] == "SUCCEEDED", logs
    [(_, status, recorded, _)] = run_rows(settings.database_url)
    assert (status, recorded) == ("succeeded", job_id)
    orders = bronze_table(parse_spec(spec_path.read_text()), "orders")
    assert bronze_postgres(settings.database_url, orders).num_rows > 0


def test_refusals_are_one_clear_message_and_record_nothing(tmp_path, settings, head):
    env = head_env(settings, head)
    spec_path = str(write_spec(tmp_path, "refused"))

    parts = urlsplit(settings.database_url)
    with_password = urlunsplit(parts._replace(netloc=f"postgres:hunter2@{parts.netloc.rpartition('@')[2]}"))
    proc = ipai("submit", spec_path, "--address", head.url, "--database-url", with_password, env=env)
    assert proc.returncode == 1 and "carries a password" in proc.stderr and "~/.pgpass" in proc.stderr
    assert "hunter2" not in proc.stderr and "Traceback" not in proc.stderr

    proc = ipai("submit", spec_path, "--address", f"http://127.0.0.1:{_free_port()}", env=env)
    assert proc.returncode == 1 and "cannot reach the Ray dashboard" in proc.stderr
    assert "Traceback" not in proc.stderr

    no_token = {**env, "HOME": str(tmp_path)}
    proc = ipai("submit", spec_path, "--address", head.url, env=no_token)
    assert proc.returncode == 1 and "wants a token" in proc.stderr and "~/.ray/auth_token" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = ipai("submit", spec_path, "--address", head.url, env={**env, "RAY_AUTH_TOKEN": "not-the-token"})
    assert proc.returncode == 1 and "refused the token" in proc.stderr and "Traceback" not in proc.stderr

    with psycopg.connect(settings.database_url) as conn:  # refused before the control plane was even opened
        assert conn.execute("select to_regclass('connector_runs')").fetchone() == (None,)
