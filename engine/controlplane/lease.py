"""The run's lease on its row in `connector_runs`: who holds a running run, and until when.

A driver renews the lease from a thread (`Lease`) while its process lives; a run whose lease lapsed is taken as
dead. Before a new run of an instance starts, `expire_stale` closes such a run as failed, so the instance is free
again and the next run resumes from what was committed. Progress saves renew the lease too
(`records.update_progress`), and raise LeaseLost when the run was taken from its driver.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg

from engine.controlplane.db import Database


def expire_stale(conn: psycopg.Connection[Any], instance_id: str) -> None:
    """Fail the instance's running run whose lease has lapsed (its driver stopped heartbeating)."""
    conn.execute(
        "update connector_runs set status = 'failed', ended_at = now(),"
        " error = 'lease expired: the driver stopped heartbeating; the next run resumes from committed state'"
        " where instance_id = %s and status = 'running' and lease_expires_at < now()",
        (instance_id,),
    )


class Lease:
    """Renews the run's lease from a thread while the driver process lives, whatever the driver is doing
    (planning a large source, waiting on a write): a lease that lapses means the process is gone."""

    def __init__(self, db: Database, run_id: str, lease_seconds: float) -> None:
        self.db, self.run_id, self.lease_seconds = db, run_id, lease_seconds
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._renew, name=f"lease {run_id[:8]}", daemon=True)
        self.thread.start()

    def _renew(self) -> None:
        every = max(0.2, min(5.0, self.lease_seconds / 4))
        try:
            with self.db.connect() as conn:
                while not self.done.wait(every):
                    cur = conn.execute(
                        "update connector_runs set heartbeat_at = now(),"
                        " lease_expires_at = now() + make_interval(secs => %s) where id = %s and status = 'running'",
                        (self.lease_seconds, self.run_id))
                    if cur.rowcount == 0:
                        return  # the run ended, or was taken over: the driver's next progress save says which
        except psycopg.Error:
            return  # the control plane is unreachable: the driver's own writes fail and end the run

    def stop(self) -> None:
        """Stop renewing (the run has ended, or its driver is going away)."""
        self.done.set()
        self.thread.join(timeout=10)
