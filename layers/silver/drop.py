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


def drop_postgres_table(url: str, schema: str, table: str) -> None:
    """Drop `schema.table` on the Postgres at `url`, if it exists."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"drop table if exists {quote_ident(schema)}.{quote_ident(table)}")  # type: ignore[arg-type]
