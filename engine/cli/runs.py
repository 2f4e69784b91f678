"""`ipai runs` and `ipai logs`: what ran, how it went, and each run's structured logs."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from engine.cli.common import DatabaseOpt, control_plane, out, resolve_settings
from engine.controlplane import records


def runs(
    instance: Annotated[str | None, typer.Option("--instance", help="Only this instance (name or id).")] = None,
    limit: Annotated[int, typer.Option(help="How many runs to show.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """List recent runs, newest first."""
    with control_plane(resolve_settings(database_url)) as db, db.connect() as conn:
        instance_id = str(records.find_instance(conn, instance)["id"]) if instance else None
        rows = records.list_runs(conn, instance_id=instance_id, limit=limit)
    if as_json:
        for r in rows:
            out.print(json.dumps({k: r[k] for k in ("id", "instance_name", "env", "status", "started_at", "ended_at",
                                                    "rows_processed", "partitions_done", "partitions_total",
                                                    "error", "metrics", "ray_job_id")}, default=str), highlight=False, soft_wrap=True)
        return
    if not rows:
        out.print("no runs yet: start one with `ipai submit SPEC --wait`")
        return
    table = Table()
    # The Ray job column only when a listed run ran as one: most runs are local, and the table is wide already.
    jobs = any(r["ray_job_id"] for r in rows)
    for col in ("run", "instance", "status", "started", "seconds", "rows", "partitions", "error",
                *(("ray job",) if jobs else ())):
        table.add_column(col, overflow="fold")
    for r in rows:
        seconds = (r["ended_at"] - r["started_at"]).total_seconds() if r["ended_at"] and r["started_at"] else None
        table.add_row(str(r["id"]), f"{r['instance_name']} ({r['env']})", r["status"],
                      r["started_at"].strftime("%Y-%m-%d %H:%M:%S") if r["started_at"] else "-",
                      f"{seconds:.1f}" if seconds is not None else "-", f"{r['rows_processed']:,}",
                      f"{r['partitions_done']}/{r['partitions_total']}", (r["error"] or "")[:80],
                      *((r["ray_job_id"] or "-",) if jobs else ()))
    out.print(table)


def logs(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="Run id (or a unique prefix).")],
    database_url: DatabaseOpt = None,
) -> None:
    """Print a run's structured logs, one JSON object per line."""
    with control_plane(resolve_settings(database_url), quiet=True) as db, db.connect() as conn:
        run = records.get_run(conn, run_id)
        for record in records.get_logs(conn, str(run["id"])):
            out.print(records.format_log(record), highlight=False, soft_wrap=True, markup=False)
