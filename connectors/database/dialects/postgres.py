"""PostgreSQL (`postgresql://`) over ADBC: libpq's binary transfer straight into Arrow.

Types are mapped faithfully: integers, floats, booleans, text, enums (as text), dates, timestamps (with
and without time zone), bytea, arrays of scalars as lists, numeric(p,s) with p <= 38 as decimal(p,s);
unconstrained numeric, json/jsonb, uuid, interval and any other type as their exact text.

A query stream's columns are found by preparing it (result types and modifiers), never by running it. A
connection may import a snapshot exported by a CDC slot (connectors/database/cdc/replication.py), so the
table's rows are read exactly as of the slot's consistent point.

Every connection to a source goes through `conninfo`: the host is checked against the egress policy and the
connection pinned to the checked addresses (`hostaddr=`), and every parameter that says where or as whom we
connect is given explicitly, so libpq takes nothing from the worker's environment (`PGHOST`, `PGUSER`,
`PGPASSWORD` ...) or home (`~/.pgpass`, client certificates). `PGSERVICE` can only fill parameters given
nowhere else, none of which redirects the connection. After connecting, `check_source`
(connectors/database/guard.py) refuses the control-plane database before anything is read.
"""

from __future__ import annotations

import json
import os
import pwd
import re
from typing import Any

import psycopg
import pyarrow as pa
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from connectors.database.dialects.base import Catalog, Column, Dialect, checked_pk, first_line
from connectors.database.guard import SourceAccess, check_source
from connectors.database.spec import TableSpec
from engine.core.egress import EgressPolicy, check_host
from engine.core.errors import ConfigError
from engine.core.spec import redact_url
from engine.core.urls import beyond_this_machine
from engine.core.sql import quote_ident

NATIVE = {"int2", "int4", "int8", "float4", "float8", "bool", "text", "varchar", "bpchar", "name", "date",
          "timestamp", "timestamptz", "bytea"}
"""Types whose Arrow form from ADBC is already what bronze keeps."""
NATIVE_ARRAYS = {"_int2", "_int4", "_int8", "_float4", "_float8", "_bool", "_text", "_varchar"}
INTEGER_TYPES = {"int2", "int4", "int8"}
CURSOR_TYPES = {"int2", "int4", "int8", "timestamp", "timestamptz", "date", "numeric"}
_SNAPSHOT_NAME = re.compile(r"^[0-9A-F-]+$")
NO_FILE = "/dev/null/none"
"""A path that cannot exist (/dev/null is no folder). libpq takes an empty `passfile` to mean ~/.pgpass, and a
missing file to mean none, so this is how a source reads no password file or client certificate."""
WORKER_FILES = ("passfile", "sslcert", "sslkey", "service", "hostaddr")
"""URL parameters a spec may not set: they would use a file, a service or an address of the worker host."""


class PostgresDialect(Dialect):
    """PostgreSQL over ADBC (libpq, binary COPY-like transfer straight into Arrow)."""

    name = "postgresql"

    def connect(self, url: str, access: SourceAccess, snapshot: str | None = None) -> Any:
        import adbc_driver_postgresql.dbapi as adbc

        # With a snapshot the transaction is ours: it must import the snapshot before anything else.
        conn = adbc.connect(conninfo(url, access.egress), autocommit=snapshot is not None)
        try:
            check_source(conn, access.control_plane, where=f"source database {redact_url(url)}")
        except BaseException:
            conn.close()
            raise
        if snapshot is None:
            return conn
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


def _beyond(host: str, addresses: tuple[str, ...]) -> bool:
    """Whether the connection crosses a network: then TLS is required unless the URL chooses (RELIABILITY 20)."""
    return beyond_this_machine(make_conninfo("", host=host, hostaddr=",".join(addresses)) if addresses
                               else make_conninfo("", host=host))


def conninfo(url: str, egress: EgressPolicy, *, read_only: bool = True) -> str:
    """The libpq connection string for a source `url`: its host checked against `egress` and pinned to the
    checked addresses, every parameter that says where or as whom given explicitly (see the module docstring),
    and, `read_only`, every transaction of the session read-only (`default_transaction_read_only`, added to the
    URL's `options`): a query stream may not write, even through a writable CTE (`with x as (delete ...) select
    ...`) or a function with side effects."""
    shown = f"source database {redact_url(url)}"
    try:
        given = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise ConfigError(f"{shown}: not a PostgreSQL URL libpq can read") from None
    refused = [k for k in WORKER_FILES if k in given]
    if refused:
        raise ConfigError(f"{shown}: `{refused[0]}=` would use a file, service or address of the worker host, and "
                          "source URLs may not; give the server's host, port, user and database in the URL")
    host, port = str(given.get("host") or ""), str(given.get("port") or "5432")
    if not host or "," in host or not port.isdigit():
        raise ConfigError(f"{shown}: name one server (postgresql://USER@HOST:PORT/DB, or ?host=/socket/folder "
                          "for a Unix socket)")
    addresses = check_host(host, egress, port=int(port), what=f"{shown}: host")
    try:
        user = str(given.get("user") or pwd.getpwuid(os.getuid()).pw_name)  # libpq's own default, without PGUSER
    except KeyError:
        raise ConfigError(f"{shown}: name the user in the URL (postgresql://USER@HOST/DB)") from None
    # An empty hostaddr is none at all, where a missing one would be PGHOSTADDR's (which turns a socket into TCP).
    params = {**given, "host": ",".join([host] * len(addresses)) or host, "hostaddr": ",".join(addresses),
              "port": port, "user": user, "dbname": given.get("dbname") or user,
              "password": given.get("password") or "", "passfile": NO_FILE, "sslcert": NO_FILE, "sslkey": NO_FILE,
              "sslmode": given.get("sslmode") or ("require" if _beyond(host, addresses) else "prefer"), "connect_timeout": given.get("connect_timeout") or "10"}
    if read_only:
        params["options"] = f"{given.get('options') or ''} -c default_transaction_read_only=on".strip()
    return make_conninfo("", **params)


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
