"""Workers and the run queue (NFR-012, NFR-003): any number of `ipai worker` processes, on any number of
machines, take queued runs from the control plane and run them on Ray.

    connector_run (RPC) / ipai.schedule_due (cron) / a retry -> connector_runs status 'queued'
      -> a worker claims the oldest due run (FOR UPDATE SKIP LOCKED: one claimer per run), status 'running',
         lease = now + lease_s -> the driver runs it, every heartbeat renews the lease -> outcome recorded
    a worker that dies stops renewing: once its lease has expired any worker or scheduler marks the run
    failed and queues the next attempt (up to max_attempts, backing off 5 s, 10 s, 20 s ...), which resumes
    from what the dead one committed (open extractions, the partition ledger; a full refresh's attempt
    finishes the full read it planned). The database refuses a second active run of an instance, so an
    attempt never overlaps another run.

Workers connect as the `ipai_worker` role (IPAI_WORKER_DATABASE_URL, else the control-plane URL with that
user). They wake on `NOTIFY ipai_run_queued` or every `poll_s`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from types import FrameType
from typing import Any

import psycopg

from engine import control
from engine.config import WORKER_ROLE, Settings, as_role
from engine.db import Database, open_database
from engine.errors import ConfigError, DatabaseUnreachable, IpaiError, RunCancelled, RunDeferred, SpecError
from engine.secrets import vault_session

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
            if conn.execute("select to_regprocedure('ipai.schedule_due(timestamptz)')").fetchone() == (None,):
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


def claim(conn: psycopg.Connection[Any], worker_id: str, lease_s: float) -> Claimed | None:
    """Take the oldest due queued run, or None. SKIP LOCKED: concurrent claimers never take the same run."""
    row = conn.execute(
        "update connector_runs r set status = 'running', worker_id = %s, started_at = now(), heartbeat_at = now(),"
        " lease_expires_at = now() + make_interval(secs => %s)"
        " where r.id = (select q.id from connector_runs q where q.status = 'queued'"
        "   and (q.not_before is null or q.not_before <= now())"
        "   order by coalesce(q.not_before, q.created_at), q.created_at limit 1 for update skip locked)"
        " returning r.id, r.instance_id, r.attempt, r.max_attempts, r.trigger, r.full_refresh, r.definition_id",
        (worker_id, lease_s),
    ).fetchone()
    if row is None:
        return None
    d = conn.execute("select yaml_spec, name, version from connector_definitions where id = %s", (row[6],)).fetchone()
    assert d is not None  # a foreign key
    return Claimed(str(row[0]), str(row[1]), row[2], row[3], row[4], row[5], d[0], d[1], d[2])


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
                control.log(conn, retry, "info", "run.retry",
                            f"attempt {attempt + 1} of {max_attempts}: resumes run {run_id}, whose lease expired",
                            retry_of=str(run_id))
                conn.execute("select pg_notify(%s, %s)", (CHANNEL, retry))
            elif attempt >= max_attempts:
                then = f"no attempts left ({attempt} of {max_attempts}); the next run resumes from committed state"
            else:
                then = "another run of the instance is already queued; it resumes from committed state"
            control.log(conn, str(run_id), "error", "run.lease_expired", f"{error}; {then}",
                        retry_run_id=retry, attempt=attempt)
            out.append((str(run_id), retry))
    return out


class Worker:
    """One worker process: claims runs one at a time and runs each with the driver on Ray."""

    def __init__(self, settings: Settings, *, lease_s: float = LEASE_S, poll_s: float = POLL_S,
                 max_runs: int | None = None, idle_exit_s: float | None = None) -> None:
        self.settings = settings
        self.lease_s, self.poll_s = lease_s, poll_s
        self.max_runs, self.idle_exit_s = max_runs, idle_exit_s
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stopping = False
        self.running: str | None = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping or self.running is None:
            self.stopping = True
            if self.running is not None:
                raise KeyboardInterrupt  # the second request: cancel the run under way (it is requeued)
            return
        self.stopping = True
        emit("worker.stopping", f"finishing run {self.running}, then stopping (again to cancel it)", worker=self.id)

    def serve(self) -> int:
        """Claim and run until stopped (SIGTERM/SIGINT), `max_runs` are done, or idle for `idle_exit_s`."""
        from engine.raytime import ensure_ray

        db = worker_database(self.settings)
        # Joining Ray installs Ray's own SIGTERM handler (exit at once), so join before installing ours: SIGTERM
        # must let the current run finish.
        ensure_ray(self.settings.ray_address)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        done = 0
        idle_since = time.monotonic()
        emit("worker.started", f"worker {self.id} waiting for runs on {db.display_url}", worker=self.id)
        with db.connect() as conn:
            conn.execute(f"listen {CHANNEL}")
            while not self.stopping and (self.max_runs is None or done < self.max_runs):
                for failed, retry in reap(conn):
                    emit("run.lease_expired", f"run {failed} lost its worker; retry: {retry or 'none'}",
                         run_id=failed, retry_run_id=retry)
                job = claim(conn, self.id, self.lease_s)
                if job is None:
                    if self.idle_exit_s is not None and time.monotonic() - idle_since > self.idle_exit_s:
                        break
                    for _ in conn.notifies(timeout=self.poll_s, stop_after=1):
                        pass
                    continue
                self._execute(db, conn, job)
                done += 1
                idle_since = time.monotonic()
        emit("worker.stopped", f"worker {self.id} stopped after {done} run(s)", worker=self.id, runs=done)
        return done

    def _execute(self, db: Database, conn: psycopg.Connection[Any], job: Claimed) -> None:
        from engine.driver import RunOptions, execute_run
        from engine.specload import parse_spec

        self.running = job.run_id
        emit("run.claimed", f"run {job.run_id} of {job.name} v{job.version} (attempt {job.attempt})",
             run_id=job.run_id, instance=job.name, attempt=job.attempt, trigger=job.trigger)
        try:
            try:
                spec = parse_spec(job.yaml_spec, filename=f"<{job.name} v{job.version}>")
            except SpecError as exc:
                message = f"the stored spec is invalid; fix it and create the connector again: {exc}"
                control.finish_run(conn, job.run_id, status="failed", error=message)
                control.log(conn, job.run_id, "error", "run.failed", message)
                emit("run.failed", message, run_id=job.run_id)
                return
            options = RunOptions(full_refresh=job.full_refresh, trigger=job.trigger, lease_seconds=self.lease_s)
            result = execute_run(spec, db=db, settings=self.settings, options=options, instance_id=job.instance_id,
                                 run_id=job.run_id)
            emit("run.succeeded", f"run {job.run_id}: {result.rows} rows in {result.seconds} s", run_id=job.run_id,
                 rows=result.rows, seconds=result.seconds)
        except RunDeferred as exc:
            follow = self._requeue(conn, job, trigger="resume", not_before=exc.until)
            emit("run.deferred", f"{exc}; resumes as run {follow}", run_id=job.run_id, resume_run_id=follow)
        except RunCancelled:
            follow = self._requeue(conn, job, trigger="retry", not_before=None)
            emit("run.cancelled", f"run {job.run_id} cancelled as the worker stopped; requeued as run {follow}",
                 run_id=job.run_id, retry_run_id=follow)
            self.stopping = True
        except IpaiError as exc:
            emit("run.failed", str(exc), run_id=job.run_id)  # the driver recorded it on the run
        finally:
            self.running = None

    @staticmethod
    def _requeue(conn: psycopg.Connection[Any], job: Claimed, *, trigger: str, not_before: float | None) -> str | None:
        """Queue the run again (it resumes from committed state): after a deferral or a cancelled run."""
        row = conn.execute(
            "insert into connector_runs (tenant_id, instance_id, definition_id, status, trigger, full_refresh, attempt,"
            " max_attempts, retry_of, not_before) select tenant_id, instance_id, definition_id, 'queued', %s,"
            " false, attempt, max_attempts, id, to_timestamp(%s) from connector_runs where id = %s"
            " on conflict do nothing returning id",
            (trigger, not_before, job.run_id),
        ).fetchone()
        if row is None:
            return None
        control.log(conn, str(row[0]), "info", f"run.{trigger}", f"continues run {job.run_id}", continues=job.run_id)
        return str(row[0])


def emit(event: str, message: str, **fields: Any) -> None:
    """One JSON line on stdout: what workers and schedulers print for their supervisors."""
    record = {"ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "event": event,
              "message": message, **fields}
    sys.stdout.write(json.dumps(record, default=str) + "\n")
    sys.stdout.flush()
