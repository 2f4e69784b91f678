"""The registry of physical tables: which instance owns each place data lands (`ipai_data_locations`).

Every bronze, silver and quarantine table, in Delta and in Postgres, is owned by exactly one instance. A run
claims its tables before its first write (`claim`): a place no one owns becomes the instance's, one the
instance owns already is fine, and one another instance owns is refused, naming the owner and the spec
setting that chose the place. `ipai silver rebuild` checks the same way before it drops anything.

A location is a text key: `delta:<absolute folder or URI>` or `postgres:<server>/<database>/<schema>.<table>`,
where the server is PostgreSQL's system identifier (the same for every host alias, address or socket of one
server) or, where a role may not read it, the host and port of the URL.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg

from engine.core.errors import ConfigError


@dataclass(frozen=True)
class Location:
    """One place a table of an instance lives."""

    key: str
    label: str
    """How a person names it: `Postgres bronze_dev.raw_shop_orders`, `Delta /data/lakehouse/bronze_dev/...`."""
    layer: str
    """bronze, silver or quarantine."""
    stream: str
    setting: str
    """The spec setting that chose the place, or `name` when the instance's own address did."""
    schema_name: str | None
    table_name: str


def delta_location(uri: str, *, layer: str, stream: str, setting: str) -> Location:
    """The location of the Delta table at `uri` (a local folder is made absolute)."""
    where = uri.rstrip("/")
    if "://" not in where:
        where = str(Path(where).expanduser().resolve())
    elif where.startswith("file://"):
        where = str(Path(where.removeprefix("file://")).resolve())
    return Location(f"delta:{where}", f"Delta table {where}", layer, stream, setting, None, where.rsplit("/", 1)[-1])


def postgres_location(server: str, schema: str, table: str, *, layer: str, stream: str, setting: str) -> Location:
    """The location of `schema.table` on the Postgres `server` (`server_identity`)."""
    return Location(f"postgres:{server}/{schema}.{table}", f"Postgres table {schema}.{table}", layer, stream,
                    setting, schema, table)


def server_identity(url: str) -> str:
    """`<system identifier>/<database>` of the Postgres server at `url`, or `<host>:<port>/<database>` when the
    role may not read the identifier. Raises psycopg.Error when the server cannot be reached."""
    with psycopg.connect(url, connect_timeout=10) as conn:
        db = conn.info.dbname
        try:
            row = conn.execute("select system_identifier from pg_control_system()").fetchone()
        except psycopg.Error:
            return f"{conn.info.host}:{conn.info.port}/{db}"
        return f"{row[0]}/{db}" if row else f"{conn.info.host}:{conn.info.port}/{db}"


def claim(conn: psycopg.Connection[Any], instance_id: str, source_type: str, locations: list[Location],
          *, who: str) -> None:
    """Make `locations` the instance's; raise ConfigError naming the owner of any another instance owns.

    `who` names the claiming instance in the message (`shop (tenant local, env dev)`)."""
    if not locations:
        return
    streams: dict[str, str] = {}
    for loc in locations:
        if streams.setdefault(loc.key, loc.stream) != loc.stream:
            raise ConfigError(f"{who}: streams {streams[loc.key]} and {loc.stream} would both be written to "
                              f"{loc.label}: shorten the instance name (`name:`) or rename a stream")
    rows = [dict(asdict(loc), location=loc.key, source_type=source_type) for loc in locations]
    taken = conn.execute("select location, owner from ipai.claim_locations(%s, %s)",
                         (instance_id, json.dumps(rows))).fetchall()
    if taken:
        by_key = {loc.key: loc for loc in locations}
        groups: dict[tuple[str, str], list[str]] = {}
        for key, owner in taken:
            loc = by_key[key]
            fix = (f"change `{loc.setting}` in the spec" if loc.setting != "name"
                   else "rename one of the instances (`name:`)")
            groups.setdefault((owner, fix), []).append(loc.label)
        problems = [f"{_listed(labels)} belong{'s' * (len(labels) == 1)} to {owner}; {fix}"
                    for (owner, fix), labels in groups.items()]
        raise ConfigError(f"{who} cannot write where another instance's data is: " + "; ".join(problems))


def _listed(labels: list[str]) -> str:
    if len(labels) <= 2:
        return " and ".join(labels)
    return f"{labels[0]} and {len(labels) - 1} more tables"
