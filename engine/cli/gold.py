"""`ipai gold`: apply the gold views of a folder to Postgres, and list them.

`apply` exits 1 when any view failed (each failure printed as `FILE:LINE:COLUMN: message` on stderr, the
other views still applied), 0 otherwise; a skipped view (its silver table does not exist yet) is
reported without failing. Errors print one message, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from engine.cli.common import DatabaseOpt, control_plane, err, out, resolve_settings
from engine.controlplane.gold import apply_everywhere, gold_scopes
from engine.controlplane.locations import server_identity
from layers.gold.apply import DEFAULT_DIRECTORY, GoldResult, GoldScope, list_gold

gold_app = typer.Typer(help="Gold views: documented business views over silver, read by the analyst role "
                       "(Superset).", no_args_is_help=True)

DirOpt = Annotated[Path, typer.Option("--dir", help="Folder of gold_<domain>_<entity>.sql files, each with "
                                      "its .yaml.", file_okay=False)]


@gold_app.command("apply")
def gold_apply(directory: DirOpt = DEFAULT_DIRECTORY, database_url: DatabaseOpt = None) -> None:
    """Create or replace every view of the folder in the gold schema of each tenant and env with silver
    tables (`gold`, `gold_dev`, `acme_gold` ...), with its documentation as comments."""
    settings = resolve_settings(database_url)
    failed = False
    with control_plane(settings) as db, db.connect() as conn, db.connect() as apply_conn:
        for scope, result in apply_everywhere(conn, apply_conn, db.url, directory, default_tenant=settings.tenant):
            failed = failed or not result.ok
            _report(scope.gold_schema, result)
    if failed:
        raise typer.Exit(1)


def _report(schema: str, result: GoldResult) -> None:
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)
    for name in result.applied:
        out.print(f"[green]applied[/green]  {schema}.{name}", highlight=False)
    for skip in result.skipped:
        out.print(f"[yellow]skipped[/yellow]  {escape(str(skip))}", highlight=False, soft_wrap=True)
    for failure in result.failed:
        err.print(f"[red]failed[/red]   {escape(str(failure))}", highlight=False, soft_wrap=True)
    out.print(f"{schema}: {len(result.applied)} applied, {len(result.skipped)} skipped, {len(result.failed)} failed",
              highlight=False)


@gold_app.command("list")
def gold_list(directory: DirOpt = DEFAULT_DIRECTORY, database_url: DatabaseOpt = None) -> None:
    """List the folder's views and those in the database (per tenant and env), and whether each is applied."""
    settings = resolve_settings(database_url)
    with control_plane(settings, quiet=True) as db, db.connect() as conn:
        scopes = gold_scopes(conn, server_identity(db.url)) or [GoldScope(settings.tenant)]
        listings = [(scope, list_gold(conn, directory, scope)) for scope in scopes]
    table = Table("view", "applied", "columns", "description")
    for scope, listing in listings:
        for view in listing:
            state = "yes" if view.defined and view.in_database else "no" if view.defined else "not in folder"
            table.add_row(f"{scope.gold_schema}.{view.name}", state, str(view.columns), view.description)
    out.print(table)
