"""MySQL and MariaDB (`mysql://`, `mariadb://`): the catalog through PyMySQL, rows through connectorx.

A query stream's columns come from the description of its result with `limit 0`: MySQL describes no query
without running it, and information_schema knows no temporary view. The host is checked against the egress
policy (engine/core/egress.py) and both drivers connect to the checked address, never to the name again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa

from connectors.database.dialects.base import Catalog, Column, Dialect, checked_pk, driver_message
from connectors.database.guard import SourceAccess
from connectors.database.spec import TableSpec
from engine.core.egress import EgressPolicy, check_host
from engine.core.errors import ConfigError
from engine.core.spec import redact_url


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
READ_ONLY_SESSION = "SET SESSION TRANSACTION READ ONLY"
"""Every transaction of a source session is read-only: a query stream may not write, even through a function
with side effects."""


class MysqlDialect(Dialect):
    """MySQL and MariaDB (`mysql://user@host:port/db`): the catalog through PyMySQL, rows through connectorx
    (Rust, straight into Arrow). connectorx takes no bound parameters, so the query it runs is rendered by
    PyMySQL's own parameter escaping (`mogrify`), the same path PyMySQL binds with. Sessions run in UTC, so
    TIMESTAMP columns arrive as UTC instants."""

    name = "mysql"

    def _params(self, url: str, egress: EgressPolicy) -> dict[str, Any]:
        u = urlsplit(url)
        host, port = u.hostname or "127.0.0.1", u.port or 3306
        address = check_host(host, egress, port=port, what=f"source database {redact_url(url)}: host")[0]
        return {"host": address, "port": port, "user": u.username or "root", "password": u.password or "",
                "database": u.path.lstrip("/") or None, "connect_timeout": 10}

    def connect(self, url: str, access: SourceAccess, snapshot: str | None = None) -> Any:
        import pymysql

        conn = pymysql.connect(**self._params(url, access.egress))
        with conn.cursor() as cur:
            cur.execute(UTC_SESSION)
            cur.execute(READ_ONLY_SESSION)
        return conn

    @contextmanager
    def catalog(self, url: str, access: SourceAccess, snapshot: str | None = None) -> Iterator[Catalog]:
        with super().catalog(url, access, snapshot) as cat:
            yield _MysqlCatalog(cat.conn)

    def read(self, cat: Catalog, url: str, sql: str, params: tuple[Any, ...]) -> Iterator[pa.RecordBatch]:
        import connectorx as cx

        query = cat.cur.mogrify(sql, params)
        u = urlsplit(url)
        address = cat.conn.host  # the catalog's checked address: connectorx does not resolve the name again
        server = f"[{address}]" if ":" in address else address
        login = u.netloc.rpartition("@")[0]
        pinned = urlunsplit(("mysql", f"{login}@{server}:{u.port or 3306}" if login else f"{server}:{u.port or 3306}",
                             u.path, u.query, ""))
        try:
            reader = cx.read_sql(pinned, query, return_type="arrow_stream",
                                 pre_execution_query=[UTC_SESSION, READ_ONLY_SESSION])
        except Exception as exc:  # noqa: BLE001 - the driver's message, with the URL redacted
            raise ConfigError(f"source database {redact_url(url)}: {driver_message(url, exc)}") from None
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
        return columns, checked_pk(t, columns, pk)

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
