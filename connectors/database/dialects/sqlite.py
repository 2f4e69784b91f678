"""SQLite files (`sqlite:///absolute/path.db`) over ADBC.

A query stream's columns come from a temporary view of it (this connection's only): SQLite declares the
types of the columns the query passes through. A file is opened only inside the folders the egress policy
allows (IPAI_SQLITE_ROOTS; engine/core/egress.py), by its resolved path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from connectors.database.dialects.base import Catalog, Column, Dialect, checked_pk
from connectors.database.guard import SourceAccess
from connectors.database.spec import TableSpec
from engine.core.egress import check_path


class SqliteDialect(Dialect):
    """SQLite files over ADBC (`sqlite:///absolute/path.db`)."""

    name = "sqlite"

    def connect(self, url: str, access: SourceAccess, snapshot: str | None = None) -> Any:
        import adbc_driver_sqlite.dbapi as adbc

        path = check_path(Path("/" + urlsplit(url).path.lstrip("/")), access.egress)  # sqlite:////x is /x too
        if not path.exists():
            raise FileNotFoundError(f"no such file {path}")
        return adbc.connect(path.as_uri() + "?mode=ro")  # a query stream may not write the file

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
        return columns, checked_pk(t, columns, pk)

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
