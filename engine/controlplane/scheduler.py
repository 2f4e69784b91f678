"""The scheduler (FR-004): `ipai scheduler` calls `ipai.schedule_due_now()` every few seconds, which enqueues each
enabled instance's due cron fire time once (see supabase/migrations/*_cron_scheduler.sql for the policy on
missed times). Any number of schedulers may run: the database keeps one run per (instance, fire time).
It also fails runs whose lease expired (as workers do), so a crashed worker's run is retried even while
no other worker is looking.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from datetime import datetime, timezone
from types import FrameType
from typing import Any

import psycopg

from engine.controlplane.db import open_database
from engine.controlplane.queue import emit, reap, worker_database
from engine.controlplane.settings import Settings

INTERVAL_S = 5.0


def tick(conn: psycopg.Connection[Any], now: datetime | None = None) -> int:
    """Enqueue the runs due at `now` (default: the database's clock); return how many.

    Only an admin connection may name the time (drills): the worker role calls `ipai.schedule_due_now()`,
    so no worker can push every schedule forward by passing a time in the future."""
    if now is None:
        row = conn.execute("select ipai.schedule_due_now()").fetchone()
    else:
        row = conn.execute("select ipai.schedule_due(%s)", (now,)).fetchone()
    return int(row[0]) if row else 0


def next_runs(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """The session tenant's instances with their schedule, next fire time and latest run."""
    cur = conn.execute(
        "select i.name, i.env, d.type, d.version, i.status, i.schedule,"
        " case when i.schedule is not null and i.status = 'active'"
        "      then ipai.cron_next(i.schedule, coalesce(i.last_scheduled_for, i.created_at)) end as next_run_at,"
        " r.status as last_status, coalesce(r.ended_at, r.started_at, r.created_at) as last_at"
        " from connector_instances i join connector_definitions d on d.id = i.definition_id"
        " left join lateral (select * from connector_runs x where x.instance_id = i.id"
        "                    order by x.created_at desc limit 1) r on true"
        " where i.tenant_id = ipai.current_tenant() order by i.name, i.env"
    )
    names = [c.name for c in cur.description or []]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


class Scheduler:
    def __init__(self, settings: Settings, *, interval_s: float = INTERVAL_S,
                 clock: Callable[[], datetime | None] = lambda: None) -> None:
        self.settings, self.interval_s, self.clock = settings, interval_s, clock
        self.stopping = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def serve(self, *, ticks: int | None = None) -> None:
        # A drill's simulated clock names the time, which only an admin may: it connects as the owner.
        db = worker_database(self.settings) if self.clock() is None else open_database(self.settings)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        emit("scheduler.started", f"scheduler enqueuing due runs every {self.interval_s:g} s on {db.display_url}")
        done = 0
        with db.connect() as conn:
            while not self.stopping and (ticks is None or done < ticks):
                now = self.clock()
                n = tick(conn, now)
                if n:
                    emit("scheduler.enqueued", f"{n} run(s) enqueued",
                         runs=n, at=(now or datetime.now(timezone.utc)).isoformat())
                for failed, retry in reap(conn):
                    emit("run.lease_expired", f"run {failed} lost its worker; retry: {retry or 'none'}",
                         run_id=failed, retry_run_id=retry)
                done += 1
                deadline = time.monotonic() + self.interval_s
                while not self.stopping and time.monotonic() < deadline:
                    time.sleep(min(0.2, self.interval_s))
        emit("scheduler.stopped", "scheduler stopped")


def fast_clock(start: datetime, speed: float) -> Callable[[], datetime]:
    """A clock that starts at `start` and runs `speed` times faster than real time (for drills and tests)."""
    t0 = time.monotonic()

    def now() -> datetime:
        return datetime.fromtimestamp(start.timestamp() + (time.monotonic() - t0) * speed, timezone.utc)

    return now
