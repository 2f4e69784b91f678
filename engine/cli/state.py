"""`ipai state`: show or reset an instance's sync state (cursors, committed partitions)."""

from __future__ import annotations


import typer
from rich.table import Table

from engine.cli.common import (
    DatabaseOpt, EnvOpt, InstanceArg, StreamOpt, YesOpt, control_plane, out, resolve_settings,
)
from engine.controlplane import records, state

state_app = typer.Typer(help="Show or reset an instance's sync state (cursors, committed partitions).",
                        no_args_is_help=True)


@state_app.command("show")
def state_show(
    instance: InstanceArg,
    env: EnvOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Show each stream's cursor, committed partitions and any unfinished extraction."""
    with control_plane(resolve_settings(database_url), quiet=True) as db, db.connect() as conn:
        inst = records.find_instance(conn, instance, env=env)
        rows = state.show(conn, str(inst["id"]))
    table = Table(title=f"{inst['name']} ({inst['env']})", title_justify="left")
    for col in ("stream", "cursor", "partitions committed", "rows committed", "unfinished extraction"):
        table.add_column(col)
    for r in rows:
        open_parts = r["open_extraction_partitions"]
        table.add_row(r["stream"], r["cursor"] or "-", str(r["partitions_committed"]), f"{r['rows_committed']:,}",
                      f"{open_parts} partitions planned" if open_parts is not None else "-")
    out.print(table if rows else f"{inst['name']}: no state yet")


@state_app.command("reset")
def state_reset(
    instance: InstanceArg,
    stream: StreamOpt = None,
    env: EnvOpt = None,
    yes: YesOpt = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Forget cursors and committed partitions: the next run re-reads from the beginning."""
    with control_plane(resolve_settings(database_url), quiet=True) as db, db.connect() as conn:
        inst = records.find_instance(conn, instance, env=env)
        what = f"stream {stream} of {inst['name']}" if stream else f"every stream of {inst['name']}"
        if not yes and not typer.confirm(f"Reset the sync state of {what} ({inst['env']})?"):
            raise typer.Exit(1)
        n = state.reset(conn, str(inst["id"]), stream)
    out.print(f"reset {what}: {n} state rows removed; bronze data stays, the next run re-reads from the start")
