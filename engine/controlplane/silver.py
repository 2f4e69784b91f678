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

from engine.controlplane import locations, records
from engine.controlplane.vault import value_as_admin
from engine.core.errors import ConfigError
from engine.core.spec import ConnectorSpec
from layers.addressing import Address
from layers.silver.drop import drop_delta_table, drop_postgres_table


@dataclass(frozen=True)
class SilverRebuild:
    """The silver tables of one instance chosen for rebuilding."""

    instance: dict[str, Any]
    """The instance's record (`records.find_instance`)."""
    spec: ConnectorSpec
    streams: tuple[str, ...]

    @property
    def address(self) -> Address:
        return Address(self.instance["tenant_name"], self.instance["env"], self.instance["name"])

    @property
    def tables(self) -> list[str]:
        return [self.address.silver_table(s) for s in self.streams]


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
                   lakehouse_uri: str) -> Iterator[tuple[str, str, list[str]]]:
    """Drop each chosen stream's silver table (Delta and Postgres) and mark its extractions unmerged, one stream
    at a time; yield (stream, table, views dropped with it) as each is done.

    Raises ConfigError, before dropping anything, when another instance owns one of the tables (a spec's
    `silver_schema` or `lakehouse.uri` aimed at it)."""
    dest = found.spec.destinations
    pg_url = None
    if dest.postgres.enabled:
        pg_url = value_as_admin(conn, str(found.instance["tenant_id"]), dest.postgres.url or control_plane_url,
                                field="destinations.postgres.url")
    lakehouse = dest.lakehouse.uri or lakehouse_uri
    schema = dest.postgres.silver_schema or found.address.schema("silver")
    places = []
    for name, table in zip(found.streams, found.tables):
        if dest.lakehouse.enabled:
            places.append(locations.delta_location(found.address.delta_uri(lakehouse, "silver", table), layer="silver",
                                                   stream=name, setting="destinations.lakehouse.uri"))
        if pg_url:
            places.append(locations.postgres_location(locations.server_identity(pg_url), schema, table,
                                                      layer="silver", stream=name,
                                                      setting="destinations.postgres.silver_schema"))
    inst = found.instance
    locations.claim(conn, str(inst["id"]), str(inst["source_type"]), places,
                    who=f"instance {inst['name']} (tenant {inst['tenant_name']}, env {inst['env']})")
    for name, table in zip(found.streams, found.tables):
        views: list[str] = []
        if dest.lakehouse.enabled:
            drop_delta_table(found.address.delta_uri(lakehouse, "silver", table))
        if pg_url:
            views = drop_postgres_table(pg_url, schema, table)
        conn.execute("update connector_extractions set silver_merged_at = null where instance_id = %s"
                     " and stream = %s", (inst["id"], name))
        yield name, table, views
