"""`ipai silver rebuild`: lay an instance's silver tables out again from its bronze history.

Silver is a function of bronze: dropping a silver table and marking the stream's finished extractions
unmerged makes the next run merge them all again, oldest first. That is how a new `silver.partition_by`
or `silver.flatten` reaches rows already merged; nothing in bronze or in the cursors changes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated
from urllib.parse import urlparse

import psycopg
import typer

from engine.core.errors import ConfigError

silver_app = typer.Typer(help="Silver tables: one row per key, merged from bronze.", no_args_is_help=True)

# Imported only once silver_app exists (see engine/cli/gold.py for why).
from engine.controlplane import records  # noqa: E402
from engine.cli.main import (  # noqa: E402
    DatabaseOpt, EnvOpt, InstanceArg, LakehouseOpt, YesOpt, _database, _settings, out,
)


@silver_app.command("rebuild")
def silver_rebuild(
    instance: InstanceArg,
    stream: Annotated[str | None, typer.Option(help="Only this stream.")] = None,
    env: EnvOpt = None,
    yes: YesOpt = False,
    database_url: DatabaseOpt = None,
    lakehouse: LakehouseOpt = None,
) -> None:
    """Drop INSTANCE's silver tables and have the next run merge its whole bronze history into them again."""
    from engine.controlplane.vault import read_as_admin
    from engine.core.spec import SecretRef
    from connectors.specload import parse_spec
    from layers.delta import table_uri
    from engine.core.sql import quote_ident

    settings = _settings(database_url, lakehouse)
    with _database(settings, quiet=True) as db, db.connect() as conn:
        inst = records.find_instance(conn, instance, env=env)
        row = conn.execute("select yaml_spec from connector_definitions where id = %s",
                           (inst["definition_id"],)).fetchone()
        spec = parse_spec(row[0] if row else "", filename=f"instance {inst['name']}")
        known = [r[0] for r in conn.execute("select distinct stream from connector_extractions where instance_id = %s"
                                            " order by 1", (inst["id"],))]
        chosen = [s for s in known if stream in (None, s)]
        if not chosen:
            raise ConfigError(f"instance {inst['name']} has no extraction" + (f" of stream {stream}; its streams: "
                              f"{', '.join(known) or 'none yet'}" if stream else " yet: nothing to rebuild"))
        tables = ", ".join(f"{spec.name}_{s}" for s in chosen)
        if not yes and not typer.confirm(f"Drop silver table(s) {tables} of {inst['name']} ({inst['env']}) and "
                                         "rebuild them from bronze on the next run?"):
            raise typer.Exit(1)
        dest = spec.destinations
        pg_url: str | None = None
        if dest.postgres.enabled:
            ref = dest.postgres.url or db.url
            if isinstance(ref, SecretRef):
                pg_url = read_as_admin(conn, str(inst["tenant_id"]), ref.secret)
                if pg_url is None:
                    raise ConfigError(f"destinations.postgres.url: secret {ref.secret!r} is not set in the Vault")
            else:
                pg_url = ref
        for name in chosen:
            table = f"{spec.name}_{name}"
            if dest.lakehouse.enabled:
                _remove_folder(table_uri(dest.lakehouse.uri or settings.lakehouse_uri, "silver", table))
            if pg_url:
                with psycopg.connect(pg_url, autocommit=True) as target:
                    target.execute(f"drop table if exists {quote_ident(dest.postgres.silver_schema)}.{quote_ident(table)}")
            conn.execute("update connector_extractions set silver_merged_at = null where instance_id = %s"
                         " and stream = %s", (inst["id"], name))
            out.print(f"{name}: silver {table} dropped; the next run merges its bronze history again", highlight=False)


def _remove_folder(uri: str) -> None:
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise ConfigError(f"{uri}: only a local lakehouse folder can be dropped here; delete the table's prefix "
                          "with your storage's tools, then run this again")
    path = Path(parsed.path if parsed.scheme else uri)
    if path.exists():
        shutil.rmtree(path)
