"""`ipai cdc`: the replication slots of PostgreSQL cdc streams (engine/controlplane/cdc.py drops them)."""

from __future__ import annotations


import typer

from engine.cli.common import (
    DatabaseOpt, EnvOpt, InstanceArg, StreamOpt, YesOpt, control_plane, out, resolve_settings,
)

cdc_app = typer.Typer(help="Change data capture: the replication slots of PostgreSQL cdc streams.",
                      no_args_is_help=True)


@cdc_app.command("drop")
def cdc_drop(
    instance: InstanceArg,
    stream: StreamOpt = None,
    env: EnvOpt = None,
    yes: YesOpt = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Remove the replication slots and publications of INSTANCE's cdc streams, so the source server frees the
    WAL they hold; their cursors are reset and the next run takes a new snapshot. Slots of others are refused."""
    from engine.controlplane.cdc import drop_slots, find_cdc_streams

    with control_plane(resolve_settings(database_url), quiet=True) as db, db.connect() as conn:
        found = find_cdc_streams(conn, instance, env=env, stream=stream)
        inst = found.instance
        if not yes and not typer.confirm(f"Drop replication slot(s) {', '.join(found.slots)} of {inst['name']} "
                                         f"({inst['env']})? The next run takes a new snapshot."):
            raise typer.Exit(1)
        for name, removed in drop_slots(conn, found):
            out.print(f"{name}: " + (f"dropped {' and '.join(removed)}" if removed else "no slot to drop")
                      + "; the next run takes a new snapshot", highlight=False)
