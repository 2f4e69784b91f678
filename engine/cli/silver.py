"""`ipai silver rebuild`: lay an instance's silver tables out again from its bronze history
(engine/controlplane/silver.py does it; this asks and prints)."""

from __future__ import annotations

import typer

from engine.cli.common import (
    DatabaseOpt, EnvOpt, InstanceArg, LakehouseOpt, StreamOpt, YesOpt, control_plane, out, resolve_settings,
)

silver_app = typer.Typer(help="Silver tables: one row per key, merged from bronze.", no_args_is_help=True)


@silver_app.command("rebuild")
def silver_rebuild(
    instance: InstanceArg,
    stream: StreamOpt = None,
    env: EnvOpt = None,
    yes: YesOpt = False,
    database_url: DatabaseOpt = None,
    lakehouse: LakehouseOpt = None,
) -> None:
    """Drop INSTANCE's silver tables and have the next run merge its whole bronze history into them again."""
    from engine.controlplane.silver import find_silver_streams, rebuild_silver

    settings = resolve_settings(database_url, lakehouse)
    with control_plane(settings, quiet=True) as db, db.connect() as conn:
        found = find_silver_streams(conn, instance, env=env, stream=stream)
        inst = found.instance
        if not yes and not typer.confirm(f"Drop silver table(s) {', '.join(found.tables)} of {inst['name']} "
                                         f"({inst['env']}) and rebuild them from bronze on the next run?"):
            raise typer.Exit(1)
        for name, table, views in rebuild_silver(conn, found, control_plane_url=db.url,
                                                 lakehouse_uri=settings.lakehouse_uri):
            out.print(f"{name}: silver {table} dropped; the next run merges its bronze history again", highlight=False)
            if views:
                out.print(f"{name}: views over it dropped too: {', '.join(views)}; the next run with the gold layer "
                          "(or `ipai gold apply`) makes them again", highlight=False)
