"""The `database` source (FR-010): tables of a database, read in parallel key ranges straight into Arrow.

PostgreSQL (`postgresql://`) and SQLite files (`sqlite:///path`) through ADBC, MySQL and MariaDB
(`mysql://`) through connectorx: drivers that hand Arrow batches over without Python objects per row; a `Dialect` holds what differs (catalog, quoting,
bound values, types). Each table is a stream. Planning asks the source
once: the table and columns exist, the primary key, the partition key (the integer primary key unless
`partition_on` names another indexed integer column), its min and max, and the row estimate; the key
range is cut into partitions of about `partition_rows` rows (ranges from min/max over an index, never a
hash that scans the whole table per shard). Each partition is one Ray task that streams Arrow batches.

Incremental streams filter on their cursor column with a window (lo, hi]: lo is the stored cursor (less
`lookback`), hi is the column's maximum read while planning and fixed for the whole extraction, so a row
committed during the run with a later value is read next time, never skipped; the watermark moves to hi.
A run whose changes fit one partition reads them in one (the cursor's index does the work); more are
split by key range. A cursor column without an index gets a warning with its cost. Rows whose cursor is
null are read by the first extraction (and full syncs) only.

A stream may be a query instead of a table (`query:` a SELECT, with a `name:`): planning and reads wrap it
as a subquery (`select ... from (<query>) as q where <key range> and <cursor window>`), so key ranges and
cursor windows work unchanged and the database pushes them into the query. Its columns and types come
from the database's own description of the result, without running it and without writing to the
database (a read-only replica will do): PostgreSQL prepares it (result types and modifiers), MySQL and
MariaDB run it with `limit 0` (the result's description), SQLite reads a temporary view of it. A query
that does not compile is refused while planning, with the server's message. Its primary key is what
`primary_key:` says; whether its cursor is indexed cannot be known, so no index warning is given, and
it has no change log to follow (no sync_mode cdc).

Types (PostgreSQL) are mapped faithfully: integers, floats, booleans, text, enums (as text), dates, timestamps (with
and without time zone), bytea, arrays of scalars as lists, numeric(p,s) with p <= 38 as decimal(p,s);
unconstrained numeric, json/jsonb, uuid, interval and any other type as their exact text.
Identifiers are quoted through one helper (`layers.postgres.quote_ident`); values are always bound.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from engine.errors import ConfigError
from engine.protocol import Partition, Plan, PlanContext, ReadContext
from engine.spec import NAME_PATTERN, ConnectorSpec, SecretRef, SpecModel, redact_url
from layers.postgres import quote_ident

NATIVE = {"int2", "int4", "int8", "float4", "float8", "bool", "text", "varchar", "bpchar", "name", "date",
          "timestamp", "timestamptz", "bytea"}
"""Types whose Arrow form from ADBC is already what bronze keeps."""
NATIVE_ARRAYS = {"_int2", "_int4", "_int8", "_float4", "_float8", "_bool", "_text", "_varchar"}
INTEGER_TYPES = {"int2", "int4", "int8"}
CURSOR_TYPES = {"int2", "int4", "int8", "timestamp", "timestamptz", "date", "numeric"}


class TableSpec(SpecModel):
    """One table, or one query, to sync as a stream."""

    table: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")
    """`schema.table`, or `table` in `public`."""
    query: str | None = None
    """A SELECT (or WITH ... SELECT) read instead of a table; needs `name:`. `cursor`, `primary_key` and
    `partition_on` then name columns of its result."""
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    """Stream name (bronze table `raw_<spec name>_<name>`); defaults to the table's name in lower case."""
    cursor: str | None = None
    """Column that grows when a row changes (`updated_at`, `write_date`, a sequence); needed for incremental."""
    primary_key: tuple[str, ...] = ()
    """Defaults to the table's primary key (a query has none unless given)."""
    partition_on: str | None = None
    """Integer column to cut into ranges; defaults to a single-column integer primary key."""
    slot: str | None = Field(default=None, pattern=r"^[a-z0-9_]{1,63}$")
    """sync_mode cdc (PostgreSQL): the replication slot and publication; defaults to `ipai_<spec>_<stream>`."""

    @field_validator("query")
    @classmethod
    def _one_select(cls, value: str | None) -> str | None:
        if value is None:
            return value
        text = value.strip().rstrip(";").rstrip()
        if not re.match(r"(?is)^(select|with)\b", text):
            raise ValueError("a query stream reads one SELECT (or WITH ... SELECT) statement")
        return text

    @model_validator(mode="after")
    def _table_or_query(self) -> TableSpec:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of `table:` and `query:`")
        if self.query is not None and self.name is None:
            raise ValueError("a query stream needs `name:` (its bronze table is raw_<spec name>_<name>)")
        return self

    @property
    def schema_name(self) -> str:
        assert self.table is not None, "a query stream has no schema"
        return self.table.split(".")[0] if "." in self.table else "public"

    @property
    def table_name(self) -> str:
        assert self.table is not None, "a query stream has no table"
        return self.table.split(".")[-1]

    @property
    def stream_name(self) -> str:
        return self.name or self.table_name.lower()

    @property
    def label(self) -> str:
        """How messages name what the stream reads."""
        return self.table or f"the query of stream {self.name}"


class DatabaseSource(SpecModel):
    """A database reached by URL, and the tables to read from it."""

    url: str | SecretRef
    """`postgresql://user@host:port/db` or `sqlite:///absolute/path.db`; a URL with a password must be a
    secret reference."""
    tables: tuple[TableSpec, ...] = Field(min_length=1)
    partition_rows: int = Field(default=500_000, ge=1_000)
    """About how many rows one partition (one Ray task) reads."""
    lookback_s: int = Field(default=0, ge=0)
    """Re-read this many seconds before the stored cursor of timestamp cursors (late commits)."""

    @field_validator("tables")
    @classmethod
    def _one_stream_per_name(cls, tables: tuple[TableSpec, ...]) -> tuple[TableSpec, ...]:
        names = [t.stream_name for t in tables]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"two tables make stream {dupes[0]!r}; give one a `name:`")
        return tables

    @field_validator("url")
    @classmethod
    def _no_password_in_clear(cls, value: str | SecretRef) -> str | SecretRef:
        if isinstance(value, str):
            if redact_url(value) != value:
                raise ValueError("the URL carries a password; store the whole URL as a secret "
                                 "(`ipai secret set NAME`) and write url: {secret: NAME}")
            if not value.startswith(("postgresql://", "postgres://", "mysql://", "mariadb://", "sqlite:///")):
                raise ValueError("use a postgresql://, mysql:// (MySQL, MariaDB) or sqlite:/// URL")
        return value


class DatabaseSpec(ConnectorSpec):
    """A spec reading tables of a database."""

    source_type: Literal["database"]
    source: DatabaseSource

    @model_validator(mode="after")
    def _no_query_follows_the_log(self) -> DatabaseSpec:
        for t in self.source.tables:
            if t.query is not None and self.stream_mode(t.stream_name) == "cdc":
                raise ValueError(f"stream {t.stream_name}: a query has no change log to follow (sync_mode cdc); "
                                 "read it incrementally, or stream its tables with cdc")
        return self


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


def _to_json(value: Any) -> Any:
    """A cursor value as stored in the state (JSON, lossless: timestamps in UTC to the microsecond)."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
        return value.isoformat(timespec="microseconds")
    if isinstance(value, date):
        return value.isoformat()
    if hasattr(value, "as_integer_ratio") and not isinstance(value, (int, float)):
        return str(value)  # Decimal
    return value


@dataclass(frozen=True)
class DatabaseStream:
    """One table: planned on the driver (catalog, key range, cursor bound), read in Ray tasks over ADBC."""

    spec_name: str
    url: str | SecretRef
    table: TableSpec
    partition_rows: int
    lookback_s: int
    cdc: bool = False
    """The spec streams this table with sync_mode cdc."""

    @property
    def name(self) -> str:
        return self.table.stream_name

    @property
    def primary_key(self) -> tuple[str, ...]:
        return self.table.primary_key

    @property
    def cursor_field(self) -> str | None:
        return self.table.cursor

    supports_cdc = True
    """sync_mode cdc follows PostgreSQL's write-ahead log (connectors.pgcdc); other databases refuse it."""

    def schema(self) -> pa.Schema | None:
        return None

    def _url(self, secrets: dict[str, str]) -> str:
        return secrets[self.url.secret] if isinstance(self.url, SecretRef) else self.url

    def partition_key(self, d: Dialect, by_name: dict[str, Column], pk: tuple[str, ...]) -> str | None:
        """The integer column cut into ranges: `partition_on`, else a single-column integer primary key."""
        key = self.table.partition_on or (pk[0] if len(pk) == 1 and d.is_integer(by_name[pk[0]]) else None)
        if key is not None and not d.is_integer(by_name[key]):
            raise ConfigError(f"stream {self.name}: partition_on column {key!r} is {by_name[key].type}; "
                              "give an integer column")
        return key

    def resumable(self, partitions: list[Partition]) -> bool:
        """Whether an unfinished extraction can go on (a CDC snapshot cannot outlive the run that exported it)."""
        from connectors import pgcdc

        return pgcdc.resumable(self, partitions)

    def committed(self, cursor: Any, secrets: dict[str, str]) -> None:
        """Called once the stream's extraction is committed in bronze: a CDC slot confirms `cursor`."""
        if self.cdc:
            from connectors import pgcdc

            pgcdc.committed(self, cursor, self._url(secrets))

    def release(self) -> None:
        """The run is over: a CDC snapshot it exported is let go (an open snapshot holds back the source's
        vacuum; a later run that finds its extraction unfinished takes a new one)."""
        if self.cdc:
            from connectors import pgcdc

            pgcdc.close_snapshot(pgcdc.slot_name(self))

    def plan(self, ctx: PlanContext) -> Plan:
        url = self._url(ctx.secrets)
        d = dialect_for(url)
        if ctx.sync_mode == "cdc":
            from connectors import pgcdc

            return pgcdc.plan(self, ctx, url)
        t = self.table
        with d.catalog(url) as cat:
            columns, pk = d.describe(cat, t, url)
            by_name = {c.name: c for c in columns}
            for field, col in (("cursor", t.cursor), ("partition_on", t.partition_on)):
                if col is not None and col not in by_name:
                    raise ConfigError(f"stream {self.name}: {field} column {col!r} does not exist in {t.label}; "
                                      f"its columns: {', '.join(by_name)}")
            if ctx.sync_mode == "incremental" and t.cursor is None:
                raise ConfigError(f"stream {self.name}: incremental sync needs `cursor:` (a column that grows when a "
                                  f"row changes) for {t.label}, or sync_mode full")
            if t.cursor is not None and not d.cursor_ok(by_name[t.cursor]):
                raise ConfigError(f"stream {self.name}: cursor column {t.cursor!r} is {by_name[t.cursor].type}; "
                                  "use an integer, numeric, date or timestamp column")
            key = self.partition_key(d, by_name, pk)
            warnings: list[str] = []
            cursor_lo = cursor_hi = None
            if t.cursor is not None and ctx.sync_mode == "incremental":
                if t.table is not None and not d.indexed(cat, t, t.cursor):
                    warnings.append(f"{t.table}.{t.cursor} has no index: each incremental run reads the whole table "
                                    f"(about {d.estimate(cat, t):,} rows) to find changed rows; create an index on it")
                row = cat.one(f"select max({d.quote(t.cursor)}) from {d.relation(t)}")
                cursor_hi = _to_json(row[0]) if row else None
                cursor_lo = self._lookback(ctx.cursor, by_name[t.cursor].type)
                if cursor_hi is None or (cursor_lo is not None and not _before(cursor_lo, cursor_hi)):
                    return Plan([], cursor_to=ctx.cursor, warnings=tuple(warnings))
            window = (cursor_lo, cursor_hi)
            ranges = self._ranges(d, cat, key, by_name, window if cursor_lo is not None else None)
        parts = [Partition(self.name, (("key", key or ""), ("from", lo), ("to", hi)), window) for lo, hi in ranges]
        return Plan(parts, cursor_to=cursor_hi if t.cursor is not None and ctx.sync_mode == "incremental" else None,
                    warnings=tuple(warnings))

    def _lookback(self, cursor: Any, typ: str) -> Any:
        if cursor is None or not self.lookback_s or typ.lower() not in ("timestamp", "timestamptz", "datetime"):
            return cursor
        return (datetime.fromisoformat(cursor) - timedelta(seconds=self.lookback_s)).isoformat(timespec="microseconds")

    def _ranges(self, d: Dialect, cat: Catalog, key: str | None, by_name: dict[str, Column],
                window: tuple[Any, Any] | None) -> list[tuple[int | None, int | None]]:
        t = self.table
        if key is None:
            return [(None, None)]
        q = d.quote(key)
        if window is not None:
            c, typ = d.quote(t.cursor or ""), by_name[t.cursor or ""].type
            row = cat.one(f"select count(*), min({q}), max({q}) from {d.relation(t)}"
                          f" where {c} > {d.bound(1, typ)} and {c} <= {d.bound(2, typ)}",
                          tuple(d.value(v, typ) for v in window))
            rows, lo, hi = row if row else (0, None, None)
        else:
            row = cat.one(f"select min({q}), max({q}) from {d.relation(t)}")
            lo, hi = row if row else (None, None)
            rows = d.estimate(cat, t)
        if lo is None or hi is None:
            return []
        n = max(1, min(math.ceil(rows / self.partition_rows), (hi - lo + 1)))
        step = math.ceil((hi - lo + 1) / n)
        return [(a, min(a + step, hi + 1)) for a in range(lo, hi + 1, step)]

    def open(self, ctx: ReadContext) -> DatabaseReader:
        return DatabaseReader(self, self._url(ctx.secrets))


class DatabaseReader:
    """Reads one key range (and cursor window), batch by batch over one Arrow-native connection. The columns
    are read from the catalog here, in the task: a resumed extraction is read without planning again."""

    def __init__(self, stream: DatabaseStream, url: str) -> None:
        self.stream, self.url = stream, url

    def read(self, partition: Partition) -> Iterator[pa.RecordBatch]:
        from connectors import pgcdc

        d = dialect_for(self.url)
        where = dict(partition.where)
        if "slot" in where:  # CDC: the changes of a window of the replication slot
            with d.catalog(self.url) as cat:
                columns, pk = d.columns(cat, self.stream.table, self.url)
            yield from pgcdc.read_changes(columns, pk, self.url, partition)
            return
        snapshot = where.get("snapshot")
        with d.catalog(self.url, snapshot=snapshot) as cat:  # one connection: the catalog, then the rows
            for batch in self._read(d, cat, partition):
                yield batch if snapshot is None else pgcdc.with_snapshot_columns(batch, where["lsn"])

    def _read(self, d: Dialect, cat: Catalog, partition: Partition) -> Iterator[pa.RecordBatch]:
        t = self.stream.table
        columns, _ = d.describe(cat, t, self.url)
        cursor_type = next((c.type for c in columns if c.name == t.cursor), "")
        where = dict(partition.where)
        conds: list[str] = []
        params: list[Any] = []
        if where.get("from") is not None:
            k = d.quote(where["key"])
            conds.append(f"{k} >= {d.bound(len(params) + 1, '')} and {k} < {d.bound(len(params) + 2, '')}")
            params += [where["from"], where["to"]]
        lo, hi = partition.window
        if t.cursor is not None and hi is not None:
            c = d.quote(t.cursor)
            if lo is not None:
                conds.append(f"{c} > {d.bound(len(params) + 1, cursor_type)}")
                params.append(d.value(lo, cursor_type))
            # The first extraction also takes rows whose cursor is null; later ones cannot see them change.
            null = f" or {c} is null" if lo is None else ""
            conds.append(f"({c} <= {d.bound(len(params) + 1, cursor_type)}{null})")
            params.append(d.value(hi, cursor_type))
        sql = f"select {d.select_list(columns)} from {d.relation(t)}" + (
            f" where {' and '.join(conds)}" if conds else "")
        casts = {c.name: typ for c in columns if (typ := d.arrow_type(c)) is not None}
        for batch in d.read(cat, self.url, sql, tuple(params)):
            yield _normalise(batch, casts)


def _normalise(batch: pa.RecordBatch, casts: dict[str, pa.DataType]) -> pa.RecordBatch:
    """Drop the driver's field metadata and extension wrappers; cast numeric text to its decimal type."""
    arrays, fields = [], []
    for field, col in zip(batch.schema, batch.columns, strict=True):
        if isinstance(col, pa.ExtensionArray):
            col = col.storage
        if pa.types.is_list(col.type) and col.type.value_field.metadata:
            col = col.cast(pa.list_(col.type.value_type))  # the driver's note on the element type
        if field.name in casts:
            col = col.cast(casts[field.name])
        arrays.append(col)
        fields.append(pa.field(field.name, col.type))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


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
        from connectors.pgcdc import snapshot_name

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


def _before(a: Any, b: Any) -> bool:
    return bool(a < b) if type(a) is type(b) else str(a) < str(b)


def streams(spec: DatabaseSpec) -> list[DatabaseStream]:
    s = spec.source
    return [DatabaseStream(spec.name, s.url, t, s.partition_rows, s.lookback_s,
                           cdc=spec.stream_mode(t.stream_name) == "cdc") for t in s.tables]
