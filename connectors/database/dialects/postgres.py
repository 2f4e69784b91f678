"""PostgreSQL (`postgresql://`) over ADBC: libpq's binary transfer straight into Arrow.

Types are mapped faithfully: integers, floats, booleans, text, enums (as text), dates, timestamps (with
and without time zone), bytea, arrays of scalars as lists, numeric(p,s) with p <= 38 as decimal(p,s);
unconstrained numeric, json/jsonb, uuid, interval and any other type as their exact text.

A query stream's columns are found by preparing it (result types and modifiers), never by running it. A
connection may import a snapshot exported by a CDC slot (connectors/database/cdc/replication.py), so the
table's rows are read exactly as of the slot's consistent point.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pyarrow as pa

from connectors.database.dialects.base import Catalog, Column, Dialect, checked_pk, first_line
from connectors.database.spec import TableSpec
from engine.core.errors import ConfigError
from engine.core.sql import quote_ident

NATIVE = {"int2", "int4", "int8", "float4", "float8", "bool", "text", "varchar", "bpchar", "name", "date",
          "timestamp", "timestamptz", "bytea"}
"""Types whose Arrow form from ADBC is already what bronze keeps."""
NATIVE_ARRAYS = {"_int2", "_int4", "_int8", "_float4", "_float8", "_bool", "_text", "_varchar"}
INTEGER_TYPES = {"int2", "int4", "int8"}
CURSOR_TYPES = {"int2", "int4", "int8", "timestamp", "timestamptz", "date", "numeric"}
_SNAPSHOT_NAME = re.compile(r"^[0-9A-F-]+$")


class PostgresDialect(Dialect):
    """PostgreSQL over ADBC (libpq, binary COPY-like transfer straight into Arrow)."""

    name = "postgresql"

    def connect(self, url: str, snapshot: str | None = None) -> Any:
        import adbc_driver_postgresql.dbapi as adbc

        if snapshot is None:
            return adbc.connect(read_only(url))
        conn = adbc.connect(url, autocommit=True)  # the transaction is ours: it must import the snapshot first
        cur = conn.cursor()
        cur.execute("begin isolation level repeatable read read only")
        try:
            cur.execute(f"set transaction snapshot '{snapshot_name(snapshot)}'")
        except Exception as exc:  # noqa: BLE001 - the driver's error, said in our words
            conn.close()
            raise RuntimeError(f"the CDC snapshot {snapshot} is gone (the run that exported it ended; the next "
                               f"run starts a new one): {first_line(exc)}") from None
        return conn

    def bound(self, n: int, typ: str) -> str:
        return f"${n}::{typ}" if typ else f"${n}"

    def columns(self, cat: Catalog, t: TableSpec, url: str) -> tuple[tuple[Column, ...], tuple[str, ...]]:
        rows = cat.all(
            "select a.attname, ty.typname, a.atttypmod, ty.typtype = 'e' from pg_attribute a"
            " join pg_type ty on ty.oid = a.atttypid where a.attrelid = to_regclass($1)"
            " and a.attnum > 0 and not a.attisdropped order by a.attnum", (self.qualified(t),))
        if not rows:
            known = [r[0] for r in cat.all(
                "select table_schema || '.' || table_name from information_schema.tables"
                " where table_schema not in ('pg_catalog', 'information_schema') order by 1 limit 20")]
            raise self._missing(t, url, known)
        columns = tuple(Column(n, typ, mod, enum) for n, typ, mod, enum in rows)
        pk = t.primary_key or tuple(r[0] for r in cat.all(
            "select a.attname from pg_index i join pg_attribute a on a.attrelid = i.indrelid"
            " and a.attnum = any(i.indkey) where i.indrelid = to_regclass($1) and i.indisprimary"
            " order by array_position(i.indkey, a.attnum)", (self.qualified(t),)))
        return columns, checked_pk(t, columns, pk)

    def indexed(self, cat: Catalog, t: TableSpec, column: str) -> bool:
        row = cat.one("select exists (select from pg_index i join pg_attribute a on a.attrelid = i.indrelid"
                      " and a.attnum = i.indkey[0] where i.indrelid = to_regclass($1) and a.attname = $2)",
                      (self.qualified(t), column))
        return bool(row and row[0])

    def estimate(self, cat: Catalog, t: TableSpec) -> int:
        """The planner's row estimate (an exact count when the table was never analysed)."""
        if t.query is not None:
            return _planned_rows(cat, self.relation(t))
        row = cat.one("select reltuples::bigint from pg_class where oid = to_regclass($1)", (self.qualified(t),))
        return int(row[0]) if row and row[0] >= 0 else super().estimate(cat, t)

    def query_columns(self, cat: Catalog, t: TableSpec) -> tuple[Column, ...]:
        # Prepared, not run: the driver reports each result column's type name and modifier (numeric(p,s)).
        schema = cat.cur.adbc_execute_schema(f"select * from {self.relation(t)}")
        out = []
        for f in schema:
            meta = f.metadata or {}
            typ = meta.get(b"POSTGRESQL:type", b"").decode()
            out.append(Column(f.name, typ, int(meta.get(b"POSTGRESQL:typmod", b"-1")), False))
        return tuple(out)

    def is_integer(self, c: Column) -> bool:
        return c.type in INTEGER_TYPES

    def cursor_ok(self, c: Column) -> bool:
        return c.type in CURSOR_TYPES

    def select_list(self, columns: tuple[Column, ...]) -> str:
        """The SELECT list that brings each column in its bronze form (see the module docstring)."""
        out = []
        for c in columns:
            q = quote_ident(c.name)
            if c.type in NATIVE or c.type in NATIVE_ARRAYS or c.enum:
                out.append(q)
            elif c.type == "numeric" and c.typmod >= 4 and ((c.typmod - 4) >> 16) <= 38:
                out.append(q)  # cast to decimal(p, s) on the Arrow side
            else:
                out.append(f"{q}::text as {q}")
        return ", ".join(out)

    def arrow_type(self, c: Column) -> pa.DataType | None:
        """The Arrow type a column is cast to after reading, or None to keep ADBC's."""
        if c.type == "numeric" and c.typmod >= 4 and ((c.typmod - 4) >> 16) <= 38:
            return pa.decimal128((c.typmod - 4) >> 16, (c.typmod - 4) & 0xFFFF)
        return None


def read_only(url: str) -> str:
    """Return `url` with every transaction of its session read-only (`default_transaction_read_only`, through
    libpq's `options`, added to any the URL has): a query stream may not write, even through a writable CTE
    (`with x as (delete ...) select ...`) or a function with side effects."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = " ".join(v for k, v in query if k == "options")
    rest = [(k, v) for k, v in query if k != "options"]
    rest.append(("options", f"{options} -c default_transaction_read_only=on".strip()))
    return urlunsplit(parts._replace(query=urlencode(rest, quote_via=quote)))


def snapshot_name(name: str) -> str:
    """An exported snapshot's name, checked before it is written into SET TRANSACTION SNAPSHOT (no binds)."""
    if not _SNAPSHOT_NAME.match(name):
        raise ConfigError(f"not a snapshot name: {name!r}")
    return name


def _planned_rows(cat: Catalog, relation: str) -> int:
    """PostgreSQL's estimate of the rows a query returns (EXPLAIN; the query is not run)."""
    cur = cat.conn.cursor()
    try:
        cur.adbc_statement.set_options(**{"adbc.postgresql.use_copy": "false"})  # EXPLAIN cannot run inside COPY
        cur.execute(f"explain (format json) select 1 from {relation}")
        row = cur.fetchone()
    finally:
        cur.close()
    return int(json.loads(row[0])[0]["Plan"]["Plan Rows"]) if row else 0
