"""The run queue in the control plane: workers claim queued runs, runs whose lease expired are failed and
retried with backoff, and both workers and the scheduler connect as the `ipai_worker` role.

    connector_run (RPC) / ipai.schedule_due (cron) / a retry -> connector_runs status 'queued'
      -> a worker claims the oldest due run through `ipai.claim_run` (FOR UPDATE SKIP LOCKED: one claimer per
         run), status 'running', with a claim token that alone unlocks the run's secrets
    a run whose lease expired is failed by `reap` and its next attempt queued (up to max_attempts, backing off
    5 s, 10 s, 20 s ...)

Who executes a claimed run: `engine.run.worker`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import psycopg

from engine.controlplane import records
from engine.controlplane.db import Database, open_database
from engine.controlplane.settings import WORKER_ROLE, Settings, as_role
from engine.controlplane.vault import vault_session
from engine.core.errors import ConfigError, DatabaseUnreachable

LEASE_S = 60.0
POLL_S = 2.0
RETRY_BASE_S = 5.0
RETRY_MAX_S = 300.0
CHANNEL = "ipai_run_queued"


def worker_database(settings: Settings) -> Database:
    """The control plane as the worker role; fail with what to set when that role cannot log in."""
    if settings.worker_database_url:
        db = Database(settings.worker_database_url)
    else:
        admin = open_database(settings)
        db = Database(as_role(admin.url, WORKER_ROLE), embedded_pgdata=admin.embedded_pgdata, _server=admin._server)
    db = db.with_session(vault_session(settings.home))
    try:
        with db.connect() as conn:
            if conn.execute("select to_regprocedure('ipai.claim_run(text, double precision)')").fetchone() == (None,):
                raise ConfigError(f"the control plane at {db.display_url} is not migrated for workers; "
                                  "run `ipai db migrate` (as an admin) first")
    except DatabaseUnreachable as exc:
        raise DatabaseUnreachable(f"{exc} Workers log in as role {WORKER_ROLE}: give it a password on the "
                                  "server and set IPAI_WORKER_DATABASE_URL") from None
    return db


@dataclass(frozen=True)
class Claimed:
    run_id: str
    instance_id: str
    attempt: int
    max_attempts: int
    trigger: str
    full_refresh: bool
    yaml_spec: str
    name: str
    version: int
    claim_token: str = field(default="", repr=False)
    """Unlocks the run's secrets while the claim's lease is live (`ipai.claimed_secret_read`); never logged."""


def claim(conn: psycopg.Connection[Any], worker_id: str, lease_s: float) -> Claimed | None:
    """Take the oldest due queued run, or None, through `ipai.claim_run`: SKIP LOCKED, so concurrent claimers
    never take the same run, and the claim token it returns is the only key to that run's secrets."""
    took = conn.execute("select claimed_run, claim_token from ipai.claim_run(%s, %s)", (worker_id, lease_s)).fetchone()
    if took is None:
        return None
    row = conn.execute(
        "select r.id, r.instance_id, r.attempt, r.max_attempts, r.trigger, r.full_refresh, d.yaml_spec, d.name,"
        " d.version from connector_runs r join connector_definitions d on d.id = r.definition_id where r.id = %s",
        (took[0],),
    ).fetchone()
    assert row is not None  # just claimed; runs are never deleted by workers
    return Claimed(str(row[0]), str(row[1]), row[2], row[3], row[4], row[5], row[6], row[7], row[8], took[1])


def reap(conn: psycopg.Connection[Any]) -> list[tuple[str, str | None]]:
    """Fail runs whose lease expired and queue their next attempt; return (failed run, new run or None)."""
    out: list[tuple[str, str | None]] = []
    with conn.transaction():
        dead = conn.execute(
            "update connector_runs r set status = 'failed', ended_at = now(),"
            " error = format('lease expired: %%s stopped heartbeating at %%s; committed partitions are kept',"
            "                coalesce(r.worker_id, 'its driver'), to_char(r.heartbeat_at at time zone 'UTC',"
            "                'YYYY-MM-DD HH24:MI:SS \"UTC\"'))"
            " where r.id in (select x.id from connector_runs x where x.status = 'running'"
            "   and x.lease_expires_at < now() for update skip locked)"
            " returning r.id, r.tenant_id, r.instance_id, r.definition_id, r.attempt, r.max_attempts, r.error",
        ).fetchall()
        for run_id, tenant, instance, definition, attempt, max_attempts, error in dead:
            retry = None
            if attempt < max_attempts:
                backoff = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (attempt - 1))
                row = conn.execute(
                    "insert into connector_runs (tenant_id, instance_id, definition_id, status, trigger,"
                    " attempt, max_attempts, retry_of, not_before) values (%s, %s, %s, 'queued', 'retry', %s, %s,"
                    " %s, now() + make_interval(secs => %s)) on conflict do nothing returning id",
                    (tenant, instance, definition, attempt + 1, max_attempts, run_id, backoff),
                ).fetchone()
                retry = str(row[0]) if row else None
            if retry:
                then = f"attempt {attempt + 1} of {max_attempts} queued as run {retry}"
                records.log(conn, retry, "info", "run.retry",
                            f"attempt {attempt + 1} of {max_attempts}: resumes run {run_id}, whose lease expired",
                            retry_of=str(run_id))
                conn.execute("select pg_notify(%s, %s)", (CHANNEL, retry))
            elif attempt >= max_attempts:
                then = f"no attempts left ({attempt} of {max_attempts}); the next run resumes from committed state"
            else:
                then = "another run of the instance is already queued; it resumes from committed state"
            records.log(conn, str(run_id), "error", "run.lease_expired", f"{error}; {then}",
                        retry_run_id=retry, attempt=attempt)
            out.append((str(run_id), retry))
    return out


def emit(event: str, message: str, **fields: Any) -> None:
    """One JSON line on stdout: what workers and schedulers print for their supervisors."""
    record = {"ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "event": event,
              "message": message, **fields}
    sys.stdout.write(json.dumps(record, default=str) + "\n")
    sys.stdout.flush()
