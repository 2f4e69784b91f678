"""What every dialect shares: columns, the catalog connection, the `Dialect` base and its planning queries.

A `Dialect` holds what differs between databases (connecting, catalog, quoting, bound values, types); the
planning it does the same way everywhere (the partition key, its key ranges) is written here once, over
those differences.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from connectors.database.guard import SourceAccess
from connectors.database.spec import TableSpec
from engine.core.errors import ConfigError
from engine.core.spec import redact_url
from engine.core.urls import password_of
from engine.core.sql import quote_ident


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # pg_type.typname
    typmod: int
    enum: bool


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

    def connect(self, url: str, access: SourceAccess, snapshot: str | None = None) -> Any:
        """A connection where `access` allows one (its egress policy checked before connecting, the control plane
        refused after, connectors/database/guard.py); with `snapshot`, inside a read-only transaction that
        imports that exported snapshot."""
        raise NotImplementedError

    @contextmanager
    def catalog(self, url: str, access: SourceAccess, snapshot: str | None = None) -> Iterator[Catalog]:
        try:
            conn = self.connect(url, access, snapshot)
        except ConfigError:
            raise  # a refusal (egress, the control plane) says itself what to do
        except Exception as exc:  # noqa: BLE001 - any driver's failure, reported with the URL redacted
            raise ConfigError(f"source database {redact_url(url)}: {driver_message(url, exc)}") from None
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
                              f"{driver_message(url, exc)}") from None
        return columns, checked_pk(t, columns, t.primary_key)

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

    # -- planning: the same on every database ------------------------------------------------------------

    def partition_key(self, t: TableSpec, by_name: dict[str, Column], pk: tuple[str, ...]) -> str | None:
        """The integer column cut into ranges: `partition_on`, else a single-column integer primary key."""
        key = t.partition_on or (pk[0] if len(pk) == 1 and self.is_integer(by_name[pk[0]]) else None)
        if key is not None and not self.is_integer(by_name[key]):
            raise ConfigError(f"stream {t.stream_name}: partition_on column {key!r} is {by_name[key].type}; "
                              "give an integer column")
        return key

    def key_ranges(self, cat: Catalog, t: TableSpec, key: str | None, by_name: dict[str, Column],
                   window: tuple[Any, Any] | None, *, partition_rows: int) -> list[tuple[int | None, int | None]]:
        """`key`'s range (of the rows in the cursor `window`, if given) cut into about `partition_rows` rows each."""
        if key is None:
            return [(None, None)]
        q = self.quote(key)
        if window is not None:
            c, typ = self.quote(t.cursor or ""), by_name[t.cursor or ""].type
            row = cat.one(f"select count(*), min({q}), max({q}) from {self.relation(t)}"
                          f" where {c} > {self.bound(1, typ)} and {c} <= {self.bound(2, typ)}",
                          tuple(self.value(v, typ) for v in window))
            rows, lo, hi = row if row else (0, None, None)
        else:
            row = cat.one(f"select min({q}), max({q}) from {self.relation(t)}")
            lo, hi = row if row else (None, None)
            rows = self.estimate(cat, t)
        if lo is None or hi is None:
            return []
        n = max(1, min(math.ceil(rows / partition_rows), (hi - lo + 1)))
        step = math.ceil((hi - lo + 1) / n)
        return [(a, min(a + step, hi + 1)) for a in range(lo, hi + 1, step)]


def checked_pk(t: TableSpec, columns: tuple[Column, ...], pk: tuple[str, ...]) -> tuple[str, ...]:
    """`pk`, once every column of it is known to exist."""
    missing = [c for c in pk if c not in {col.name for col in columns}]
    if missing:
        raise ConfigError(f"{'table ' if t.table else ''}{t.label}: primary_key column {missing[0]!r} does not exist")
    return pk


def first_line(exc: BaseException) -> str:
    """A driver's error in one line (its first few non-empty lines, joined)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines[:3]) or type(exc).__name__


def driver_message(url: str, exc: BaseException) -> str:
    """A driver's error in one line, with the URL's password masked wherever the driver echoed it."""
    password = password_of(url)
    text = redact_url(first_line(exc))
    return text.replace(password, "***") if password else text
