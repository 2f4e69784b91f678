"""The `database` source (FR-010): tables of a database, read in parallel key ranges straight into Arrow.

PostgreSQL (`postgresql://`), MySQL and MariaDB (`mysql://`) and SQLite files (`sqlite:///path`); what
differs between them (driver, catalog, quoting, bound values, types) is a `Dialect`, in
connectors/database/dialects/. Each table is a stream. Planning asks the source once: the table and columns
exist, the primary key, the partition key (the integer primary key unless `partition_on` names another
indexed integer column), its min and max, and the row estimate; the key range is cut into partitions of
about `partition_rows` rows (ranges from min/max over an index, never a hash that scans the whole table
per shard). Each partition is one Ray task that streams Arrow batches.

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
database (a read-only replica will do; how each database describes it: connectors/database/dialects/). A query
that does not compile is refused while planning, with the server's message. Its primary key is what
`primary_key:` says; whether its cursor is indexed cannot be known, so no index warning is given, and
it has no change log to follow (no sync_mode cdc).

Where a source may connect is the run's to say: planning and every read task take the egress policy and the
control plane's identity from their context's options (`egress`, `control_plane`; connectors/database/guard.py),
values the driver captured, so a read task in a Ray worker applies the driver's policy, not its own
environment's. Each connection checks the host (or SQLite path) before connecting and, on PostgreSQL, refuses
the control-plane database as the platform before anything is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pyarrow as pa

from connectors.database.dialects import Catalog, Dialect, dialect_for
from connectors.database.guard import SourceAccess
from connectors.database.spec import DatabaseSpec, TableSpec
from engine.core.errors import ConfigError
from engine.core.protocol import Partition, Plan, PlanContext, ReadContext
from engine.core.spec import SecretRef


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
    """sync_mode cdc follows PostgreSQL's write-ahead log (connectors.database.cdc.replication); other databases refuse it."""

    def schema(self) -> pa.Schema | None:
        return None

    def _url(self, secrets: dict[str, str]) -> str:
        return secrets[self.url.secret] if isinstance(self.url, SecretRef) else self.url

    def resumable(self, partitions: list[Partition]) -> bool:
        """Whether an unfinished extraction can go on (a CDC snapshot cannot outlive the run that exported it)."""
        from connectors.database.cdc import replication

        return replication.resumable(self, partitions)

    def committed(self, cursor: Any, secrets: dict[str, str]) -> None:
        """Called once the stream's extraction is committed in bronze: a CDC slot confirms `cursor`."""
        if self.cdc:
            from connectors.database.cdc import replication

            replication.committed(self, cursor, self._url(secrets))

    def release(self) -> None:
        """The run is over: a CDC snapshot it exported is let go (an open snapshot holds back the source's
        vacuum; a later run that finds its extraction unfinished takes a new one)."""
        if self.cdc:
            from connectors.database.cdc import replication

            replication.close_snapshot(replication.slot_name(self))

    def plan(self, ctx: PlanContext) -> Plan:
        url = self._url(ctx.secrets)
        d = dialect_for(url)
        if ctx.sync_mode == "cdc":
            from connectors.database.cdc import replication

            return replication.plan(self, ctx, url)
        t = self.table
        with d.catalog(url, SourceAccess.of(ctx.options)) as cat:
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
            key = d.partition_key(t, by_name, pk)
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
                    return Plan([], cursor_to=ctx.cursor, warnings=tuple(warnings), primary_key=tuple(pk))
            window = (cursor_lo, cursor_hi)
            ranges = d.key_ranges(cat, t, key, by_name, window if cursor_lo is not None else None,
                                  partition_rows=self.partition_rows)
        parts = [Partition(self.name, (("key", key or ""), ("from", lo), ("to", hi)), window) for lo, hi in ranges]
        return Plan(parts, cursor_to=cursor_hi if t.cursor is not None and ctx.sync_mode == "incremental" else None,
                    warnings=tuple(warnings), primary_key=tuple(pk))

    def _lookback(self, cursor: Any, typ: str) -> Any:
        if cursor is None or not self.lookback_s or typ.lower() not in ("timestamp", "timestamptz", "datetime"):
            return cursor
        return (datetime.fromisoformat(cursor) - timedelta(seconds=self.lookback_s)).isoformat(timespec="microseconds")

    def open(self, ctx: ReadContext) -> DatabaseReader:
        return DatabaseReader(self, self._url(ctx.secrets), SourceAccess.of(ctx.options))


class DatabaseReader:
    """Reads one key range (and cursor window), batch by batch over one Arrow-native connection. The columns
    are read from the catalog here, in the task: a resumed extraction is read without planning again."""

    def __init__(self, stream: DatabaseStream, url: str, access: SourceAccess) -> None:
        self.stream, self.url, self.access = stream, url, access

    def read(self, partition: Partition) -> Iterator[pa.RecordBatch]:
        from connectors.database.cdc import changes

        d = dialect_for(self.url)
        where = dict(partition.where)
        if "slot" in where:  # CDC: the changes of a window of the replication slot
            with d.catalog(self.url, self.access) as cat:
                columns, pk = d.columns(cat, self.stream.table, self.url)
            yield from changes.read_changes(columns, pk, self.url, partition, access=self.access)
            return
        snapshot = where.get("snapshot")
        with d.catalog(self.url, self.access, snapshot=snapshot) as cat:  # one connection: the catalog, then the rows
            for batch in self._read(d, cat, partition):
                yield batch if snapshot is None else changes.with_snapshot_columns(batch, where["lsn"])

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


def _before(a: Any, b: Any) -> bool:
    return bool(a < b) if type(a) is type(b) else str(a) < str(b)


def streams(spec: DatabaseSpec) -> list[DatabaseStream]:
    s = spec.source
    return [DatabaseStream(spec.name, s.url, t, s.partition_rows, s.lookback_s,
                           cdc=spec.stream_mode(t.stream_name) == "cdc") for t in s.tables]
