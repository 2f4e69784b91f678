"""`ipai instances`: the connector instances with their schedule, next run time and latest run."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from engine.cli.common import DatabaseOpt, control_plane, out, resolve_settings


def instances(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """List connector instances with their schedule, next run time and latest run."""
    from engine.controlplane.scheduler import next_runs

    with control_plane(resolve_settings(database_url), quiet=True) as db, db.connect() as conn:
        rows = next_runs(conn)
    if as_json:
        for r in rows:
            out.print(json.dumps(r, default=str), highlight=False, soft_wrap=True)
        return
    if not rows:
        out.print("no instances yet: `ipai submit SPEC` or the connector_create RPC makes one")
        return
    table = Table()
    for col in ("instance", "source", "version", "status", "schedule (UTC)", "next run", "last run"):
        table.add_column(col, overflow="fold")
    for r in rows:
        nxt = r["next_run_at"].strftime("%Y-%m-%d %H:%M") if r["next_run_at"] else "-"
        last = f"{r['last_status']} {r['last_at']:%Y-%m-%d %H:%M}" if r["last_status"] else "-"
        table.add_row(f"{r['name']} ({r['env']})", r["type"], str(r["version"]), r["status"], r["schedule"] or "manual",
                      nxt, last)
    out.print(table)
