"""The `database` source (FR-010): tables of a database, read in parallel key ranges straight into Arrow.

Today: PostgreSQL through ADBC (`postgresql://` URLs). Each table is a stream. Planning asks the source
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

Types are mapped faithfully: integers, floats, booleans, text, enums (as text), dates, timestamps (with
and without time zone), bytea, arrays of scalars as lists, numeric(p,s) with p <= 38 as decimal(p,s);
unconstrained numeric, json/jsonb, uuid, interval and any other type as their exact text.
Identifiers are quoted through one helper (`layers.postgres.quote_ident`); values are always bound.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Literal

import psycopg
import pyarrow as pa
from pydantic import Field, field_validator

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
    """One table to sync as a stream."""

    table: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")
    """`schema.table`, or `table` in `public`."""
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    """Stream name (bronze table `raw_<spec name>_<name>`); defaults to the table's name in lower case."""
    cursor: str | None = None
    """Column that grows when a row changes (`updated_at`, `write_date`, a sequence); needed for incremental."""
    primary_key: tuple[str, ...] = ()
    """Defaults to the table's primary key."""
    partition_on: str | None = None
    """Integer column to cut into ranges; defaults to a single-column integer primary key."""

    @property
    def schema_name(self) -> str:
        return self.table.split(".")[0] if "." in self.table else "public"

    @property
    def table_name(self) -> str:
        return self.table.split(".")[-1]

    @property
    def stream_name(self) -> str:
        return self.name or self.table_name.lower()


class DatabaseSource(SpecModel):
    """A database reached by URL, and the tables to read from it."""

    url: str | SecretRef
    """`postgresql://user@host:port/db`; a URL with a password must be a secret reference."""
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
            if not value.startswith(("postgresql://", "postgres://")):
                raise ValueError("only postgresql:// URLs are supported so far")
        return value


class DatabaseSpec(ConnectorSpec):
    """A spec reading tables of a database."""

    source_type: Literal["database"]
    source: DatabaseSource


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

    @property
    def name(self) -> str:
        return self.table.stream_name

    @property
    def primary_key(self) -> tuple[str, ...]:
        return self.table.primary_key

    @property
    def cursor_field(self) -> str | None:
        return self.table.cursor

    def schema(self) -> pa.Schema | None:
        return None

    def _url(self, secrets: dict[str, str]) -> str:
        return secrets[self.url.secret] if isinstance(self.url, SecretRef) else self.url

    def plan(self, ctx: PlanContext) -> Plan:
        url = self._url(ctx.secrets)
        t = self.table
        qualified = f"{quote_ident(t.schema_name)}.{quote_ident(t.table_name)}"
        try:
            conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            reason = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            raise ConfigError(f"source database {redact_url(url)}: {redact_url(reason)}") from None
        with conn:
            columns, pk = _catalog(conn, t, url)
            by_name = {c.name: c for c in columns}
            for field, col in (("cursor", t.cursor), ("partition_on", t.partition_on)):
                if col is not None and col not in by_name:
                    raise ConfigError(f"stream {self.name}: {field} column {col!r} does not exist in {t.table}; "
                                      f"its columns: {', '.join(by_name)}")
            if ctx.sync_mode == "incremental" and t.cursor is None:
                raise ConfigError(f"stream {self.name}: incremental sync needs `cursor:` (a column that grows when a "
                                  f"row changes) for {t.table}, or sync_mode full")
            if t.cursor is not None and by_name[t.cursor].type not in CURSOR_TYPES:
                raise ConfigError(f"stream {self.name}: cursor column {t.cursor!r} is {by_name[t.cursor].type}; "
                                  "use an integer, numeric, date or timestamp column")
            key = t.partition_on or (pk[0] if len(pk) == 1 and by_name[pk[0]].type in INTEGER_TYPES else None)
            if key is not None and by_name[key].type not in INTEGER_TYPES:
                raise ConfigError(f"stream {self.name}: partition_on column {key!r} is {by_name[key].type}; "
                                  "give an integer column")
            warnings: list[str] = []
            cursor_lo = cursor_hi = None
            if t.cursor is not None and ctx.sync_mode == "incremental":
                if not _indexed(conn, t, t.cursor):
                    estimate = _estimate(conn, t)
                    warnings.append(f"{t.table}.{t.cursor} has no index: each incremental run reads the whole table "
                                    f"(about {estimate:,} rows) to find changed rows; create an index on it")
                row = conn.execute(f"select max({quote_ident(t.cursor)}) from {qualified}").fetchone()  # type: ignore[arg-type]
                cursor_hi = _to_json(row[0]) if row else None
                cursor_lo = self._lookback(ctx.cursor, by_name[t.cursor].type)
                if cursor_hi is None or (cursor_lo is not None and not _before(cursor_lo, cursor_hi)):
                    return Plan([], cursor_to=ctx.cursor, warnings=tuple(warnings))
            window = (cursor_lo, cursor_hi)
            ranges = self._ranges(conn, t, qualified, key, by_name, window if cursor_lo is not None else None)
        parts = [Partition(self.name, (("key", key or ""), ("from", lo), ("to", hi)), window) for lo, hi in ranges]
        return Plan(parts, cursor_to=cursor_hi if t.cursor is not None and ctx.sync_mode == "incremental" else None,
                    warnings=tuple(warnings))

    def _lookback(self, cursor: Any, typ: str) -> Any:
        if cursor is None or not self.lookback_s or typ not in ("timestamp", "timestamptz"):
            return cursor
        return (datetime.fromisoformat(cursor) - timedelta(seconds=self.lookback_s)).isoformat(timespec="microseconds")

    def _ranges(self, conn: psycopg.Connection[Any], t: TableSpec, qualified: str, key: str | None,
                by_name: dict[str, Column], window: tuple[Any, Any] | None) -> list[tuple[int | None, int | None]]:
        if key is None:
            return [(None, None)]
        q = quote_ident(key)
        if window is not None:
            c = quote_ident(t.cursor or "")
            cast = by_name[t.cursor or ""].type
            row = conn.execute(f"select count(*), min({q}), max({q}) from {qualified}"  # type: ignore[arg-type]
                               f" where {c} > %s::{cast} and {c} <= %s::{cast}", window).fetchone()
            rows, lo, hi = row if row else (0, None, None)
        else:
            row = conn.execute(f"select min({q}), max({q}) from {qualified}").fetchone()  # type: ignore[arg-type]
            lo, hi = row if row else (None, None)
            rows = _estimate(conn, t)
        if lo is None or hi is None:
            return []
        n = max(1, min(math.ceil(rows / self.partition_rows), (hi - lo + 1)))
        step = math.ceil((hi - lo + 1) / n)
        return [(a, min(a + step, hi + 1)) for a in range(lo, hi + 1, step)]

    def open(self, ctx: ReadContext) -> DatabaseReader:
        return DatabaseReader(self, self._url(ctx.secrets))


class DatabaseReader:
    """Reads one key range (and cursor window) over one ADBC connection, batch by batch. The columns are
    read from the catalog here, in the task: a resumed extraction is read without planning again."""

    def __init__(self, stream: DatabaseStream, url: str) -> None:
        self.stream, self.url = stream, url

    def read(self, partition: Partition) -> Iterator[pa.RecordBatch]:
        import adbc_driver_postgresql.dbapi as adbc

        t = self.stream.table
        qualified = f"{quote_ident(t.schema_name)}.{quote_ident(t.table_name)}"
        try:
            conn = adbc.connect(self.url)
        except Exception as exc:  # noqa: BLE001 - reported with the URL redacted
            raise ConfigError(f"source database {redact_url(self.url)}: {redact_url(str(exc))}") from None
        try:
            cur = conn.cursor()
            cur.execute("select a.attname, ty.typname, a.atttypmod, ty.typtype = 'e' from pg_attribute a"
                        " join pg_type ty on ty.oid = a.atttypid where a.attrelid = to_regclass($1)"
                        " and a.attnum > 0 and not a.attisdropped order by a.attnum", parameters=(qualified,))
            columns = tuple(Column(n, typ, mod, enum) for n, typ, mod, enum in cur.fetchall())
            if not columns:
                raise ConfigError(f"table {t.table} no longer exists in {redact_url(self.url)}")
            cursor_type = next((c.type for c in columns if c.name == t.cursor), None)
            where = dict(partition.where)
            conds: list[str] = []
            params: list[Any] = []
            if where.get("from") is not None:
                k = quote_ident(where["key"])
                conds.append(f"{k} >= ${len(params) + 1} and {k} < ${len(params) + 2}")
                params += [where["from"], where["to"]]
            lo, hi = partition.window
            if t.cursor is not None and hi is not None:
                c = quote_ident(t.cursor)
                if lo is not None:
                    conds.append(f"{c} > ${len(params) + 1}::{cursor_type}")
                    params.append(str(lo))
                # The first extraction also takes rows whose cursor is null; later ones cannot see them change.
                null = f" or {c} is null" if lo is None else ""
                conds.append(f"({c} <= ${len(params) + 1}::{cursor_type}{null})")
                params.append(str(hi))
            sql = f"select {_select_list(columns)} from {qualified}" + (f" where {' and '.join(conds)}" if conds else "")
            casts = {c.name: typ for c in columns if (typ := _arrow_type(c)) is not None}
            cur.execute(sql, parameters=tuple(params) if params else None)
            for batch in cur.fetch_record_batch():
                yield _normalise(batch, casts)
        finally:
            conn.close()


def _normalise(batch: pa.RecordBatch, casts: dict[str, pa.DataType]) -> pa.RecordBatch:
    """Drop ADBC's field metadata and extension wrappers; cast numeric text to its decimal type."""
    arrays, fields = [], []
    for field, col in zip(batch.schema, batch.columns, strict=True):
        if isinstance(col, pa.ExtensionArray):
            col = col.storage
        if field.name in casts:
            col = col.cast(casts[field.name])
        arrays.append(col)
        fields.append(pa.field(field.name, col.type))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def _catalog(conn: psycopg.Connection[Any], t: TableSpec, url: str) -> tuple[list[Column], tuple[str, ...]]:
    """Columns and primary key of `t`; fail naming the table (and what exists) when it does not."""
    oid = conn.execute("select to_regclass(%s)::oid", (f"{quote_ident(t.schema_name)}.{quote_ident(t.table_name)}",)
                       ).fetchone()
    if oid is None or oid[0] is None:
        known = [r[0] for r in conn.execute(
            "select table_schema || '.' || table_name from information_schema.tables"
            " where table_schema not in ('pg_catalog', 'information_schema') order by 1 limit 20")]
        raise ConfigError(f"table {t.table} does not exist in {redact_url(url)}"
                          + (f"; tables there include: {', '.join(known)}" if known else "; the database has no tables"))
    rows = conn.execute(
        "select a.attname, ty.typname, a.atttypmod, ty.typtype = 'e' from pg_attribute a"
        " join pg_type ty on ty.oid = a.atttypid"
        " where a.attrelid = %s and a.attnum > 0 and not a.attisdropped order by a.attnum", (oid[0],)).fetchall()
    columns = [Column(n, typ, mod, enum) for n, typ, mod, enum in rows]
    pk = t.primary_key or tuple(r[0] for r in conn.execute(
        "select a.attname from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)"
        " where i.indrelid = %s and i.indisprimary order by array_position(i.indkey, a.attnum)", (oid[0],)))
    missing = [c for c in pk if c not in {col.name for col in columns}]
    if missing:
        raise ConfigError(f"table {t.table}: primary_key column {missing[0]!r} does not exist")
    return columns, pk


def _indexed(conn: psycopg.Connection[Any], t: TableSpec, column: str) -> bool:
    """True when some index of the table starts with `column`."""
    row = conn.execute(
        "select exists (select from pg_index i join pg_attribute a on a.attrelid = i.indrelid"
        " and a.attnum = i.indkey[0] where i.indrelid = to_regclass(%s) and a.attname = %s)",
        (f"{quote_ident(t.schema_name)}.{quote_ident(t.table_name)}", column)).fetchone()
    return bool(row and row[0])


def _estimate(conn: psycopg.Connection[Any], t: TableSpec) -> int:
    """The planner's row estimate (exact count when the table was never analysed)."""
    qualified = f"{quote_ident(t.schema_name)}.{quote_ident(t.table_name)}"
    row = conn.execute("select reltuples::bigint from pg_class where oid = to_regclass(%s)", (qualified,)).fetchone()
    if row is None or row[0] < 0:
        row = conn.execute(f"select count(*) from {qualified}").fetchone()  # type: ignore[arg-type]
    return int(row[0]) if row else 0


def _before(a: Any, b: Any) -> bool:
    return bool(a < b) if type(a) is type(b) else str(a) < str(b)


def streams(spec: DatabaseSpec) -> list[DatabaseStream]:
    s = spec.source
    return [DatabaseStream(spec.name, s.url, t, s.partition_rows, s.lookback_s) for t in s.tables]
