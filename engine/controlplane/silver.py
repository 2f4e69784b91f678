"""Rebuild an instance's silver tables from its bronze history (`ipai silver rebuild`).

Silver is a function of bronze: dropping a silver table and marking the stream's finished extractions
unmerged makes the next run merge them all again, oldest first. That is how a new `silver.partition_by`
or `silver.flatten` reaches rows already merged; nothing in bronze or in the cursors changes. Which tables
an instance has, and the destination URL (perhaps a secret of its tenant, read here as admin), are
control-plane facts; dropping a table is the layers' (`layers.silver.drop`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg

from engine.controlplane import records
from engine.controlplane.vault import value_as_admin
from engine.core.errors import ConfigError
from engine.core.spec import ConnectorSpec
from layers.delta import table_uri
from layers.refresh import silver_table
from layers.silver.drop import drop_delta_table, drop_postgres_table


@dataclass(frozen=True)
class SilverRebuild:
    """The silver tables of one instance chosen for rebuilding."""

    instance: dict[str, Any]
    """The instance's record (`records.find_instance`)."""
    spec: ConnectorSpec
    streams: tuple[str, ...]

    @property
    def tables(self) -> list[str]:
        return [silver_table(self.spec.name, s) for s in self.streams]


def find_silver_streams(conn: psycopg.Connection[Any], instance: str, *, env: str | None = None,
                        stream: str | None = None) -> SilverRebuild:
    """Return the instance's streams that have an extraction (only `stream`, when given); raise ConfigError when
    there is nothing to rebuild."""
    inst = records.find_instance(conn, instance, env=env)
    spec = records.instance_spec(conn, inst)
    known = [r[0] for r in conn.execute("select distinct stream from connector_extractions where instance_id = %s"
                                        " order by 1", (inst["id"],))]
    chosen = tuple(s for s in known if stream in (None, s))
    if not chosen:
        raise ConfigError(f"instance {inst['name']} has no extraction" + (f" of stream {stream}; its streams: "
                          f"{', '.join(known) or 'none yet'}" if stream else " yet: nothing to rebuild"))
    return SilverRebuild(inst, spec, chosen)


def rebuild_silver(conn: psycopg.Connection[Any], found: SilverRebuild, *, control_plane_url: str,
                   lakehouse_uri: str) -> Iterator[tuple[str, str]]:
    """Drop each chosen stream's silver table (Delta and Postgres) and mark its extractions unmerged, one stream
    at a time; yield (stream, table) as each is done."""
    dest = found.spec.destinations
    pg_url = None
    if dest.postgres.enabled:
        pg_url = value_as_admin(conn, str(found.instance["tenant_id"]), dest.postgres.url or control_plane_url,
                                field="destinations.postgres.url")
    for name, table in zip(found.streams, found.tables):
        if dest.lakehouse.enabled:
            drop_delta_table(table_uri(dest.lakehouse.uri or lakehouse_uri, "silver", table))
        if pg_url:
            drop_postgres_table(pg_url, dest.postgres.silver_schema, table)
        conn.execute("update connector_extractions set silver_merged_at = null where instance_id = %s"
                     " and stream = %s", (found.instance["id"], name))
        yield name, table
