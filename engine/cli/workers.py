"""`ipai run`, `ipai worker` and `ipai scheduler`: the run queue, the workers that take runs from it, and the
scheduler that fills it from cron schedules.

`run --wait` exits as the run ended: 0 succeeded, 75 deferred, 1 otherwise.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import psycopg
import typer

from engine.cli.common import DatabaseOpt, EnvOpt, InstanceArg, LakehouseOpt, control_plane, out, resolve_settings
from engine.core.errors import IpaiError


def run_queued(
    instance: InstanceArg,
    env: EnvOpt = None,
    full_refresh: Annotated[bool, typer.Option("--full-refresh", help="Re-read everything.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until a worker has finished the run.")] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Queue a run of INSTANCE for the workers (`ipai worker`); print its run id (as `connector_run` does)."""
    with control_plane(resolve_settings(database_url), quiet=True) as db, db.connect() as conn:
        result = _rpc(conn, "select public.connector_run(%s, %s, %s)", (instance, env, full_refresh))
        run_id = result["run_id"]
        out.print(f"run {run_id} {'queued' if result['created'] else 'already ' + result['status']}"
                  f" for {instance}", highlight=False)
        if not wait:
            return
        while True:
            run = _rpc(conn, "select public.connector_status(%s)", (run_id,))["run"]
            if run["status"] not in ("queued", "running"):
                break
            time.sleep(1.0)
    out.print(f"run {run_id} {run['status']}: {run['rows_processed']:,} rows"
              + (f"; {run['error']}" if run["error"] else ""), highlight=False, soft_wrap=True)
    if run["status"] != "succeeded":
        raise typer.Exit(75 if run["status"] == "deferred" else 1)


def _rpc(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...]) -> dict[str, Any]:
    """Call one of the control plane's RPC functions as an agent would; its error becomes an IpaiError."""
    row = conn.execute(sql, params).fetchone()  # type: ignore[arg-type]  # our own fixed statements
    result: dict[str, Any] = row[0] if row else {}
    if not result.get("ok"):
        error = result.get("error") or {}
        raise IpaiError(f"{error.get('code', 'error')}: {error.get('message', 'no answer')}")
    return result


def worker(
    lease: Annotated[float, typer.Option(help="Seconds a run's lease lasts between heartbeats.")] = 60.0,
    poll: Annotated[float, typer.Option(help="Seconds between looks at the queue (a NOTIFY wakes it sooner).")] = 2.0,
    max_runs: Annotated[int | None, typer.Option(help="Stop after this many runs.")] = None,
    idle_exit: Annotated[float | None, typer.Option(help="Stop after this many seconds without work.")] = None,
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster address "
                       "(default: RAY_ADDRESS, else a local Ray).", show_default=False)] = None,
    database_url: DatabaseOpt = None,
    lakehouse: LakehouseOpt = None,
) -> None:
    """Take queued runs and run them on Ray, one at a time, until stopped (SIGTERM finishes the current run)."""
    from engine.run.worker import Worker

    Worker(resolve_settings(database_url, lakehouse, address), lease_s=lease, poll_s=poll, max_runs=max_runs,
           idle_exit_s=idle_exit).serve()


def scheduler(
    interval: Annotated[float, typer.Option(help="Seconds between looks at the schedules.")] = 5.0,
    ticks: Annotated[int | None, typer.Option(hidden=True)] = None,
    simulate_from: Annotated[str | None, typer.Option(hidden=True, help="Drills: start a fast clock here (ISO).")] = None,
    speed: Annotated[float, typer.Option(hidden=True, help="Drills: how much faster the clock runs.")] = 1.0,
    database_url: DatabaseOpt = None,
) -> None:
    """Enqueue each enabled instance's runs when its cron schedule comes due (several may run: each fire time
    is enqueued once)."""
    from datetime import datetime

    from engine.controlplane.scheduler import Scheduler, fast_clock

    clock = fast_clock(datetime.fromisoformat(simulate_from), speed) if simulate_from else (lambda: None)
    Scheduler(resolve_settings(database_url), interval_s=interval, clock=clock).serve(ticks=ticks)
