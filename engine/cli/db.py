"""`ipai db migrate` and `ipai sql`: the control-plane database, its migrations and ad-hoc queries on it."""

from __future__ import annotations

from typing import Annotated, Any

import psycopg
import typer
from rich.table import Table

from engine.cli.common import DatabaseOpt, control_plane, out, resolve_settings
from engine.controlplane.db import migrate, open_database

db_app = typer.Typer(help="Control-plane database.", no_args_is_help=True)


@db_app.command("migrate")
def db_migrate(database_url: DatabaseOpt = None) -> None:
    """Apply control-plane migrations not yet applied (safe to repeat)."""
    db = open_database(resolve_settings(database_url))
    with db.connect() as conn:
        applied = migrate(conn)
    out.print(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied
              else f"up to date ({db.display_url})", highlight=False, soft_wrap=True)


def sql(
    query: Annotated[str, typer.Argument(metavar="QUERY", help="One SQL statement.")],
    limit: Annotated[int, typer.Option(help="Rows to show at most.")] = 50,
    database_url: DatabaseOpt = None,
) -> None:
    """Run a query on the control-plane database (the embedded one starts for it), e.g. on bronze tables."""
    with control_plane(resolve_settings(database_url), quiet=True) as db, db.connect() as conn:
        print_query(conn, query, limit=limit)


def print_query(conn: psycopg.Connection[Any], query: str, *, limit: int) -> None:
    """Run the statement and print its first `limit` rows as a table (or how many rows it changed)."""
    cur = conn.execute(query)  # type: ignore[arg-type]  # the user's own statement, on their own database
    if cur.description is None:
        out.print(f"ok ({cur.rowcount} rows affected)")
        return
    table = Table()
    for col in cur.description:
        table.add_column(col.name)
    rows = cur.fetchmany(limit)
    for row in rows:
        table.add_row(*("null" if v is None else str(v) for v in row))
    out.print(table)
    if cur.fetchone() is not None:
        out.print(f"(first {limit} rows shown)")
