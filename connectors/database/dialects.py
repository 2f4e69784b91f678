"""The dialects of the `database` source (connectors/database/stream.py): what differs between databases.

PostgreSQL (`postgresql://`) and SQLite files (`sqlite:///path`) through ADBC, MySQL and MariaDB
(`mysql://`) through connectorx: drivers that hand Arrow batches over without Python objects per row; a
`Dialect` holds what differs (connecting, catalog, quoting, bound values, types), and `dialect_for` picks
one by the URL's scheme.

A query stream's columns and types come from the database's own description of its result, without
running it and without writing to the database: PostgreSQL prepares it (result types and modifiers),
MySQL and MariaDB run it with `limit 0` (the result's description), SQLite reads a temporary view of it.

Types (PostgreSQL) are mapped faithfully: integers, floats, booleans, text, enums (as text), dates, timestamps (with
and without time zone), bytea, arrays of scalars as lists, numeric(p,s) with p <= 38 as decimal(p,s);
unconstrained numeric, json/jsonb, uuid, interval and any other type as their exact text.
Identifiers are quoted through one helper (`layers.postgres.quote_ident`); values are always bound.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pyarrow as pa

from engine.core.errors import ConfigError
from engine.core.spec import redact_url
from engine.core.sql import quote_ident

if TYPE_CHECKING:
    from connectors.database.stream import TableSpec

NATIVE = {"int2", "int4", "int8", "float4", "float8", "bool", "text", "varchar", "bpchar", "name", "date",
          "timestamp", "timestamptz", "bytea"}
"""Types whose Arrow form from ADBC is already what bronze keeps."""
NATIVE_ARRAYS = {"_int2", "_int4", "_int8", "_float4", "_float8", "_bool", "_text", "_varchar"}
INTEGER_TYPES = {"int2", "int4", "int8"}
CURSOR_TYPES = {"int2", "int4", "int8", "timestamp", "timestamptz", "date", "numeric"}


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # pg_type.typname
    typmod: int
    enum: bool


def _select_list(columns: tuple[Column, ...]) -> str:
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


def _arrow_type(c: Column) -> pa.DataType | None:
    """The Arrow type a column is cast to after reading, or None to keep ADBC's."""
    if c.type == "numeric" and c.typmod >= 4 and ((c.typmod - 4) >> 16) <= 38:
        return pa.decimal128((c.typmod - 4) >> 16, (c.typmod - 4) & 0xFFFF)
    return None


def _redact(url: str, text: str) -> str:
    """`text` with the URL's password masked, wherever a driver echoed it."""
    password = urlsplit(url).password
    text = redact_url(text)
    return text.replace(password, "***") if password else text


class Catalog:
    """Catalog and planning queries over one connection; values always bound."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.cur = conn.cursor()

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        self.cur.execute(sql, parameters=params or None)
        row = self.cur.fetchone()
        return tuple(row) if row is not None else None

    def all(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        self.cur.execute(sql, parameters=params or None)
        return [tuple(r) for r in self.cur.fetchall()]


class Dialect:
    """What differs between databases: connecting, the catalog, quoting, bound values, type mapping."""

    name = ""

    def connect(self, url: str, snapshot: str | None = None) -> Any:
        """A connection; with `snapshot`, inside a read-only transaction that imports that exported snapshot."""
        raise NotImplementedError

    @contextmanager
    def catalog(self, url: str, snapshot: str | None = None) -> Iterator[Catalog]:
        try:
            conn = self.connect(url, snapshot)
        except Exception as exc:  # noqa: BLE001 - any driver's failure, reported with the URL redacted
            raise ConfigError(f"source database {redact_url(url)}: {_redact(url, _first_line(exc))}") from None
        try:
            yield Catalog(conn)
        finally:
            conn.close()

    def read(self, cat: Catalog, url: str, sql: str, params: tuple[Any, ...]) -> Iterator[pa.RecordBatch]:
        """Run the partition's query on the catalog's connection, batch by batch."""
        cat.cur.execute(sql, parameters=params or None)
        yield from cat.cur.fetch_record_batch()

    def quote(self, name: str) -> str:
        return quote_ident(name)

    def qualified(self, t: TableSpec) -> str:
        return f"{self.quote(t.schema_name)}.{self.quote(t.table_name)}"

    def relation(self, t: TableSpec) -> str:
        """What a stream's SQL reads from: its table, or its query as the subquery `q`."""
        return self.qualified(t) if t.query is None else f"({t.query}) as q"

    def describe(self, cat: Catalog, t: TableSpec, url: str) -> tuple[tuple[Column, ...], tuple[str, ...]]:
        """The columns and primary key of what a stream reads: a table's from the catalog, a query's from the
        database's description of its result (a query that does not compile is refused with the server's words)."""
        if t.query is None:
            return self.columns(cat, t, url)
        try:
            columns = self.query_columns(cat, t)
        except Exception as exc:  # noqa: BLE001 - any driver's failure, reported with the URL redacted
            raise ConfigError(f"stream {t.name}: its query does not compile on {redact_url(url)}: "
                              f"{_redact(url, _first_line(exc))}") from None
        return columns, _checked_pk(t, columns, t.primary_key)

    def query_columns(self, cat: Catalog, t: TableSpec) -> tuple[Column, ...]:
        """The result columns of a query stream, found without reading its rows or writing anything."""
        raise NotImplementedError

    def bound(self, n: int, typ: str) -> str:
        """Placeholder of the n-th bound value, cast to the column type `typ` where the database needs it."""
        raise NotImplementedError

    def value(self, v: Any, typ: str) -> Any:
        """A cursor bound as the database wants it (default: as stored)."""
        return v

    def columns(self, cat: Catalog, t: TableSpec, url: str) -> tuple[tuple[Column, ...], tuple[str, ...]]:
        raise NotImplementedError

    def indexed(self, cat: Catalog, t: TableSpec, column: str) -> bool:
        raise NotImplementedError

    def estimate(self, cat: Catalog, t: TableSpec) -> int:
        row = cat.one(f"select count(*) from {self.relation(t)}")
        return int(row[0]) if row else 0

    def is_integer(self, c: Column) -> bool:
        raise NotImplementedError

    def cursor_ok(self, c: Column) -> bool:
        raise NotImplementedError

    def select_list(self, columns: tuple[Column, ...]) -> str:
        return ", ".join(self.quote(c.name) for c in columns)

    def arrow_type(self, c: Column) -> pa.DataType | None:
        return None

    def _missing(self, t: TableSpec, url: str, known: list[str]) -> ConfigError:
        return ConfigError(f"table {t.table} does not exist in {redact_url(url)}"
                           + (f"; tables there include: {', '.join(known)}" if known else "; the database has no tables"))


class PostgresDialect(Dialect):
    """PostgreSQL over ADBC (libpq, binary COPY-like transfer straight into Arrow)."""

    name = "postgresql"

    def connect(self, url: str, snapshot: str | None = None) -> Any:
        import adbc_driver_postgresql.dbapi as adbc

        if snapshot is None:
            return adbc.connect(url)
        from connectors.database.cdc.replication import snapshot_name

        conn = adbc.connect(url, autocommit=True)  # the transaction is ours: it must import the snapshot first
        cur = conn.cursor()
        cur.execute("begin isolation level repeatable read read only")
        try:
            cur.execute(f"set transaction snapshot '{snapshot_name(snapshot)}'")
        except Exception as exc:  # noqa: BLE001 - the driver's error, said in our words
            conn.close()
            raise RuntimeError(f"the CDC snapshot {snapshot} is gone (the run that exported it ended; the next "
                               f"run starts a new one): {_first_line(exc)}") from None
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
        return columns, _checked_pk(t, columns, pk)

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
        return _select_list(columns)

    def arrow_type(self, c: Column) -> pa.DataType | None:
        return _arrow_type(c)


class SqliteDialect(Dialect):
    """SQLite files over ADBC (`sqlite:///absolute/path.db`)."""

    name = "sqlite"

    def connect(self, url: str, snapshot: str | None = None) -> Any:
        import adbc_driver_sqlite.dbapi as adbc

        path = Path(urlsplit(url).path)
        if not path.exists():
            raise FileNotFoundError(f"no such file {path}")
        return adbc.connect(str(path))

    def qualified(self, t: TableSpec) -> str:
        return self.quote(t.table_name) if t.schema_name == "public" else super().qualified(t)

    def bound(self, n: int, typ: str) -> str:
        return "?"

    def columns(self, cat: Catalog, t: TableSpec, url: str) -> tuple[tuple[Column, ...], tuple[str, ...]]:
        rows = cat.all("select name, type, pk from pragma_table_info($1)", (t.table_name,))
        if not rows:
            known = [r[0] for r in cat.all("select name from sqlite_master where type = 'table' order by 1 limit 20")]
            raise self._missing(t, url, known)
        columns = tuple(Column(n, (typ or "").lower(), -1, False) for n, typ, _ in rows)
        pk = t.primary_key or tuple(n for n, _, k in sorted(rows, key=lambda r: r[2]) if k)
        return columns, _checked_pk(t, columns, pk)

    def query_columns(self, cat: Catalog, t: TableSpec) -> tuple[Column, ...]:
        # A temporary view (this connection's only) declares the types of the columns the query passes through.
        view = f"ipai_query_{t.name}"
        cat.cur.execute(f"drop view if exists temp.{self.quote(view)}")
        cat.cur.execute(f"create temp view {self.quote(view)} as {t.query}")
        rows = cat.all("select name, type from pragma_table_info($1)", (view,))
        return tuple(Column(n, (typ or "").lower(), -1, False) for n, typ in rows)

    def indexed(self, cat: Catalog, t: TableSpec, column: str) -> bool:
        for (index,) in cat.all("select name from pragma_index_list($1)", (t.table_name,)):
            first = cat.one("select name from pragma_index_info($1) order by seqno limit 1", (index,))
            if first and first[0] == column:
                return True
        return False

    def is_integer(self, c: Column) -> bool:
        return "int" in c.type

    def cursor_ok(self, c: Column) -> bool:
        return True  # SQLite stores any value in any column; ISO text and numbers both order correctly


class _MysqlCatalog(Catalog):
    """PyMySQL's cursor: values bound by the driver (`%s` placeholders). Every statement goes through its
    formatting, even without values, so a `%` of a query stream is always written `%%` (see `relation`)."""

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        self.cur.execute(sql, params)
        row = self.cur.fetchone()
        return tuple(row) if row is not None else None

    def all(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        self.cur.execute(sql, params)
        return [tuple(r) for r in self.cur.fetchall()]


MYSQL_FIELD_TYPES = {0: "decimal", 1: "tinyint", 2: "smallint", 3: "int", 4: "float", 5: "double", 7: "timestamp",
                     8: "bigint", 9: "mediumint", 10: "date", 11: "time", 12: "datetime", 13: "year", 14: "date",
                     15: "varchar", 16: "bit", 245: "json", 246: "decimal", 247: "enum", 248: "set", 249: "blob",
                     250: "blob", 251: "blob", 252: "blob", 253: "varchar", 254: "char", 255: "geometry"}
"""PyMySQL's `FIELD_TYPE` codes of a result's description, as information_schema names the types."""


MYSQL_INTEGERS = {"tinyint", "smallint", "mediumint", "int", "integer", "bigint"}
MYSQL_CURSORS = MYSQL_INTEGERS | {"decimal", "date", "datetime", "timestamp"}
UTC_SESSION = "SET time_zone = '+00:00'"


class MysqlDialect(Dialect):
    """MySQL and MariaDB (`mysql://user@host:port/db`): the catalog through PyMySQL, rows through connectorx
    (Rust, straight into Arrow). connectorx takes no bound parameters, so the query it runs is rendered by
    PyMySQL's own parameter escaping (`mogrify`), the same path PyMySQL binds with. Sessions run in UTC, so
    TIMESTAMP columns arrive as UTC instants."""

    name = "mysql"

    def _params(self, url: str) -> dict[str, Any]:
        u = urlsplit(url)
        return {"host": u.hostname or "127.0.0.1", "port": u.port or 3306, "user": u.username or "root",
                "password": u.password or "", "database": u.path.lstrip("/") or None, "connect_timeout": 10}

    def connect(self, url: str, snapshot: str | None = None) -> Any:
        import pymysql

        conn = pymysql.connect(**self._params(url))
        with conn.cursor() as cur:
            cur.execute(UTC_SESSION)
        return conn

    @contextmanager
    def catalog(self, url: str, snapshot: str | None = None) -> Iterator[Catalog]:
        with super().catalog(url, snapshot) as cat:
            yield _MysqlCatalog(cat.conn)

    def read(self, cat: Catalog, url: str, sql: str, params: tuple[Any, ...]) -> Iterator[pa.RecordBatch]:
        import connectorx as cx

        query = cat.cur.mogrify(sql, params)
        try:
            reader = cx.read_sql("mysql://" + url.split("://", 1)[1], query, return_type="arrow_stream",
                                 pre_execution_query=[UTC_SESSION])
        except Exception as exc:  # noqa: BLE001 - the driver's message, with the URL redacted
            raise ConfigError(f"source database {redact_url(url)}: {_redact(url, _first_line(exc))}") from None
        yield from reader

    def quote(self, name: str) -> str:
        return "`" + name.replace("`", "``") + "`"

    def qualified(self, t: TableSpec) -> str:
        return self.quote(t.table_name) if "." not in (t.table or "") else super().qualified(t)

    def _schema(self, t: TableSpec) -> str | None:
        return t.schema_name if "." in (t.table or "") else None

    def relation(self, t: TableSpec) -> str:
        return super().relation(t) if t.query is None else f"({t.query.replace('%', '%%')}) as q"

    def query_columns(self, cat: Catalog, t: TableSpec) -> tuple[Column, ...]:
        # MySQL describes no query without running it, and information_schema knows no temporary view: the
        # result of `limit 0` describes the columns (a decimal's length counts its sign and point, so the
        # precision taken from it is never below the true one).
        cat.all(f"select * from {self.relation(t)} limit 0")
        out = []
        for name, code, _, length, _, scale, _ in cat.cur.description:
            typ = MYSQL_FIELD_TYPES.get(code, "varchar")
            precision = (length or 0) - (1 if scale else 0)
            out.append(Column(name, typ, precision * 65536 + (scale or 0) + 4 if typ == "decimal" else -1, False))
        return tuple(out)

    def bound(self, n: int, typ: str) -> str:
        return "%s"

    def value(self, v: Any, typ: str) -> Any:
        return datetime.fromisoformat(v) if isinstance(v, str) and typ in ("datetime", "timestamp") else v

    def columns(self, cat: Catalog, t: TableSpec, url: str) -> tuple[tuple[Column, ...], tuple[str, ...]]:
        where = "table_schema = coalesce(%s, database()) and table_name = %s"
        args = (self._schema(t), t.table_name)
        rows = cat.all("select column_name, data_type, coalesce(numeric_precision, 0) * 65536"
                       " + coalesce(numeric_scale, 0) + 4 from information_schema.columns"
                       f" where {where} order by ordinal_position", args)
        if not rows:
            known = [r[0] for r in cat.all("select table_name from information_schema.tables"
                                           " where table_schema = database() order by 1 limit 20")]
            raise self._missing(t, url, known)
        columns = tuple(Column(n, str(typ).lower(), int(mod), False) for n, typ, mod in rows)
        pk = t.primary_key or tuple(r[0] for r in cat.all(
            f"select column_name from information_schema.key_column_usage where {where}"
            " and constraint_name = 'PRIMARY' order by ordinal_position", args))
        return columns, _checked_pk(t, columns, pk)

    def indexed(self, cat: Catalog, t: TableSpec, column: str) -> bool:
        row = cat.one("select count(*) from information_schema.statistics where table_schema ="
                      " coalesce(%s, database()) and table_name = %s and column_name = %s and seq_in_index = 1",
                      (self._schema(t), t.table_name, column))
        return bool(row and row[0])

    def estimate(self, cat: Catalog, t: TableSpec) -> int:
        if t.query is not None:
            return super().estimate(cat, t)
        row = cat.one("select table_rows from information_schema.tables where table_schema ="
                      " coalesce(%s, database()) and table_name = %s", (self._schema(t), t.table_name))
        return int(row[0]) if row and row[0] is not None else super().estimate(cat, t)

    def is_integer(self, c: Column) -> bool:
        return c.type in MYSQL_INTEGERS

    def cursor_ok(self, c: Column) -> bool:
        return c.type in MYSQL_CURSORS

    def arrow_type(self, c: Column) -> pa.DataType | None:
        if c.type == "decimal" and ((c.typmod - 4) >> 16) <= 38:
            return pa.decimal128((c.typmod - 4) >> 16, (c.typmod - 4) & 0xFFFF)
        if c.type == "timestamp":
            return pa.timestamp("us", tz="UTC")
        return None


DIALECTS: dict[str, Dialect] = {"postgresql": PostgresDialect(), "postgres": PostgresDialect(),
                                "sqlite": SqliteDialect(), "mysql": MysqlDialect(), "mariadb": MysqlDialect()}


def dialect_for(url: str) -> Dialect:
    scheme = urlsplit(url).scheme
    if scheme not in DIALECTS:
        raise ConfigError(f"source database URL scheme {scheme!r} is not supported; "
                          "use postgresql://, mysql:// (MySQL, MariaDB) or sqlite:///")
    return DIALECTS[scheme]


def _checked_pk(t: TableSpec, columns: tuple[Column, ...], pk: tuple[str, ...]) -> tuple[str, ...]:
    missing = [c for c in pk if c not in {col.name for col in columns}]
    if missing:
        raise ConfigError(f"{'table ' if t.table else ''}{t.label}: primary_key column {missing[0]!r} does not exist")
    return pk


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


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines[:3]) or type(exc).__name__
