"""Workers and the run queue (NFR-012, NFR-003): any number of `ipai worker` processes, on any number of
machines, take queued runs from the control plane and run them on Ray.

    connector_run (RPC) / ipai.schedule_due (cron) / a retry -> connector_runs status 'queued'
      -> a worker claims the oldest due run (`ipai.claim_run`, FOR UPDATE SKIP LOCKED: one claimer per run),
         status 'running', lease = now + lease_s, a claim token that alone unlocks the run's secrets
      -> the driver runs it, every heartbeat renews the lease -> outcome recorded
    a worker that dies stops renewing: once its lease has expired any worker or scheduler marks the run
    failed and queues the next attempt (up to max_attempts, backing off 5 s, 10 s, 20 s ...), which resumes
    from what the dead one committed (open extractions, the partition ledger; a full refresh's attempt
    finishes the full read it planned). The database refuses a second active run of an instance, so an
    attempt never overlaps another run.

Workers connect as the `ipai_worker` role (IPAI_WORKER_DATABASE_URL, else the control-plane URL with that
user). They wake on `NOTIFY ipai_run_queued` or every `poll_s`.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from types import FrameType
from typing import Any

import psycopg

from engine.controlplane import records
from engine.controlplane.db import Database
from engine.controlplane.queue import CHANNEL, LEASE_S, POLL_S, Claimed, claim, emit, reap, worker_database
from engine.controlplane.settings import Settings
from engine.core.errors import IpaiError, RunCancelled, RunDeferred, SpecError

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
        from engine.run.raytime import ensure_ray

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
        from engine.run.driver import RunOptions, execute_run
        from connectors.specload import parse_spec

        self.running = job.run_id
        emit("run.claimed", f"run {job.run_id} of {job.name} v{job.version} (attempt {job.attempt})",
             run_id=job.run_id, instance=job.name, attempt=job.attempt, trigger=job.trigger)
        try:
            try:
                spec = parse_spec(job.yaml_spec, filename=f"<{job.name} v{job.version}>")
            except SpecError as exc:
                message = f"the stored spec is invalid; fix it and create the connector again: {exc}"
                records.finish_run(conn, job.run_id, status="failed", error=message)
                records.log(conn, job.run_id, "error", "run.failed", message)
                emit("run.failed", message, run_id=job.run_id)
                return
            options = RunOptions(full_refresh=job.full_refresh, trigger=job.trigger, lease_seconds=self.lease_s)
            result = execute_run(spec, db=db, settings=self.settings, options=options, instance_id=job.instance_id,
                                 run_id=job.run_id, claim_token=job.claim_token)
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
        try:
            row = conn.execute(
                "insert into connector_runs (tenant_id, instance_id, definition_id, status, trigger, full_refresh,"
                " attempt, max_attempts, retry_of, not_before) select tenant_id, instance_id, definition_id, 'queued',"
                " %s, false, attempt, max_attempts, id, to_timestamp(%s) from connector_runs where id = %s"
                " on conflict do nothing returning id",
                (trigger, not_before, job.run_id),
            ).fetchone()
        except psycopg.errors.InsufficientPrivilege:
            # The worker role queues one follow-up of a run that ended: its lease lapsed and a reaper queued the
            # retry already, or the run was not closed as deferred or cancelled. The instance goes on either way.
            row = None
        if row is None:
            return None
        records.log(conn, str(row[0]), "info", f"run.{trigger}", f"continues run {job.run_id}", continues=job.run_id)
        return str(row[0])
