"""Dropping a silver table, Delta and Postgres, so the next merge lays it out again from bronze."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

import psycopg

from engine.core.errors import ConfigError
from engine.core.sql import quote_ident


def drop_delta_table(uri: str) -> None:
    """Remove the Delta table at `uri` (a local lakehouse folder only); nothing when it is absent."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise ConfigError(f"{uri}: only a local lakehouse folder can be dropped here; delete the table's prefix "
                          "with your storage's tools, then run this again")
    path = Path(parsed.path if parsed.scheme else uri)
    if path.exists():
        shutil.rmtree(path)


def drop_postgres_table(url: str, schema: str, table: str) -> list[str]:
    """Drop `schema.table` on the Postgres at `url`, if it exists, with the views over it (gold views: the next
    gold apply makes them again); return those views as `schema.name`."""
    relation = f"{quote_ident(schema)}.{quote_ident(table)}"
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        views = [r[0] for r in conn.execute(
            "with recursive deps(oid) as ("
            "  select distinct w.ev_class from pg_depend d join pg_rewrite w on w.oid = d.objid"
            "  where d.refobjid = to_regclass(%s) and w.ev_class <> d.refobjid"
            "  union select distinct w.ev_class from deps join pg_depend d on d.refobjid = deps.oid"
            "  join pg_rewrite w on w.oid = d.objid where w.ev_class <> d.refobjid)"
            " select distinct c.relnamespace::regnamespace::text || '.' || c.relname from deps"
            " join pg_class c on c.oid = deps.oid order by 1", (relation,))]
        conn.execute(f"drop table if exists {relation} cascade")  # type: ignore[arg-type]
    return views
