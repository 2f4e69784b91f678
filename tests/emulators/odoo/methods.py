"""The Odoo model methods the emulator serves (search_read, search, search_count, read, fields_get) over SQL.

Arguments bind to each method's parameters as Python would; every call runs on one pooled autocommit
connection, so a test may change the tables between requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
from psycopg import sql

from tests.emulators.odoo.errors import OdooError, type_error, value_error
from tests.emulators.odoo.models import MODELS, Model
from tests.emulators.odoo.sql import Params, Scope, Selection, order_sql, readable, select_sql, where_sql

SIGNATURES: dict[str, tuple[str, ...]] = {
    "search_read": ("domain", "fields", "offset", "limit", "order"),
    "search": ("domain", "offset", "limit", "order"),
    "search_count": ("domain", "limit"),
    "read": ("ids", "fields", "load"),
    "fields_get": ("allfields", "attributes"),
}


def bind(method: str, args: Any, kwargs: Any) -> dict[str, Any]:
    """Match positional and keyword arguments to `method`'s parameters as Python would."""
    params = SIGNATURES[method]
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise type_error("args must be a list and kwargs an object")
    if len(args) > len(params):
        raise type_error(f"BaseModel.{method}() takes {len(params) + 1} positional arguments but "
                         f"{len(args) + 1} were given")
    bound = dict(zip(params, args))
    for key, value in kwargs.items():
        if key == "context":
            continue
        if key not in params:
            raise type_error(f"BaseModel.{method}() got an unexpected keyword argument '{key}'")
        if key in bound:
            raise type_error(f"BaseModel.{method}() got multiple values for argument '{key}'")
        bound[key] = value
    return bound


def _count(value: Any, name: str, default: int | None) -> int | None:
    if value in (None, False) or (name == "limit" and value == 0):
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise value_error(f"Invalid {name} {value!r}")
    return value


class Models:
    """Run model methods against the schema, one pooled autocommit connection per call."""

    def __init__(self, pool: Pool, schema: str) -> None:
        self.pool, self.schema = pool, schema

    def model(self, name: Any) -> Model:
        model = MODELS.get(name) if isinstance(name, str) else None
        if model is None:
            raise OdooError("odoo.exceptions.UserError", f"Object {name} doesn't exist", status=404)
        return model

    async def call(self, model_name: Any, method: Any, args: Any, kwargs: Any, *,
                   before: Callable[[Model, dict[str, Any], dict[str, Any]], Awaitable[None]] | None = None) -> Any:
        model = self.model(model_name)
        if isinstance(method, str) and method.startswith("_"):
            raise OdooError("odoo.exceptions.AccessError",
                            f"Private methods (such as '{model.name}.{method}') cannot be called remotely.",
                            status=403)
        if method not in SIGNATURES:
            raise OdooError("builtins.AttributeError",
                            f"The method '{method}' does not exist on the model '{model.name}'", status=404)
        bound = bind(method, args, kwargs or {})
        context = (kwargs or {}).get("context") or {}
        if not isinstance(context, dict):
            raise type_error("context must be an object")
        if method == "fields_get":
            return self.fields_get(model, bound.get("allfields"), bound.get("attributes"))
        if before is not None and method in ("search", "search_read"):
            await before(model, bound, context)
        if method == "read":
            return await self.read(model, bound.get("ids"), bound.get("fields"), context,
                                   load=bound.get("load", "_classic_read") is not None)
        rows = await self.search(model, bound, context, count=method == "search_count",
                                 fields=bound.get("fields") if method == "search_read" else ["id"])
        if method == "search_count":
            return rows
        return [row["id"] for row in rows] if method == "search" else rows

    def scope(self, model: Model, context: dict[str, Any]) -> Scope:
        lang = context.get("lang") or "en_US"
        return Scope(self.schema, model, Params(str(lang)), itertools.count())

    async def search(self, model: Model, bound: dict[str, Any], context: dict[str, Any], *, count: bool,
                     fields: Any) -> Any:
        scope = self.scope(model, context)
        where, named = where_sql(scope, bound.get("domain"))
        active = "active" if scope.field("active") is not None else None
        # active_test (default true) hides archived rows unless the domain names `active` (odoo.md section 6)
        if active and context.get("active_test", True) and active not in named:
            where = sql.SQL("{} and {} = true").format(where, scope.column(active))
        offset = _count(bound.get("offset"), "offset", 0)
        limit = _count(bound.get("limit"), "limit", None)
        if count:
            query = sql.SQL("select count(*) from (select 1 from {} where {} limit {}) c").format(
                scope.source(), where, scope.params.add(limit))
            async with self.pool.connection() as conn:
                row = await (await conn.execute(query, scope.params.values)).fetchone()
            return row[0] if row else 0
        selection = select_sql(scope, readable(model, fields))
        order = order_sql(scope, bound.get("order"))  # before source(): ordering may need an _inherits join
        query = sql.SQL("select {} from {} where {} order by {} offset {} limit {}").format(
            sql.SQL(", ").join(selection.expressions), scope.source(), where, order,
            scope.params.add(offset), scope.params.add(limit))
        return await self._rows(query, scope, selection, load=True)

    async def read(self, model: Model, ids: Any, fields: Any, context: dict[str, Any], *, load: bool) -> Any:
        if isinstance(ids, int) and not isinstance(ids, bool):
            ids = [ids]
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise type_error(f"ids must be a list of integers, got {ids!r}")
        scope = self.scope(model, context)
        selection = select_sql(scope, readable(model, fields))
        query = sql.SQL("select {} from {} where {}.id = any({})").format(
            sql.SQL(", ").join(selection.expressions), scope.source(), sql.Identifier(scope.alias),
            scope.params.add(ids, "integer[]"))
        found = {row["id"]: row for row in await self._rows(query, scope, selection, load=load)}
        return [found[i] for i in dict.fromkeys(ids) if i in found]  # missing ids are skipped, as by read()

    async def _rows(self, query: sql.Composed, scope: Scope, selection: Selection, *,
                    load: bool) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(query, scope.params.values)).fetchall()
        return [selection.render(row, load=load) for row in rows]

    def fields_get(self, model: Model, allfields: Any, attributes: Any) -> dict[str, Any]:
        scope = self.scope(model, {})
        names = readable(model, None)
        if allfields:
            names = [n for n in names if n in allfields]
        out = {}
        for name in names:
            field = scope.need(name)
            stored = field.stored and name != "display_name"
            description: dict[str, Any] = {
                "type": field.type, "string": _label(name), "help": "", "required": field.required,
                "readonly": name in _READONLY, "store": stored, "sortable": stored,
                "searchable": name != "display_name", "translate": field.translate}
            if field.relation:
                description["relation"] = field.relation
            if field.selection:
                description["selection"] = [[v, _label(v)] for v in field.selection]
            out[name] = {k: v for k, v in description.items() if not attributes or k in attributes}
        return out


_READONLY = frozenset(("id", "display_name", "create_uid", "create_date", "write_uid", "write_date"))


def _label(name: str) -> str:
    special = {"id": "ID", "create_uid": "Created by", "create_date": "Created on",
               "write_uid": "Last Updated by", "write_date": "Last Updated on"}
    return special.get(name) or name.removesuffix("_id").replace("_", " ").strip().title()


class Pool:
    """A few autocommit connections, opened on first use inside the event loop."""

    def __init__(self, url: str, size: int = 4) -> None:
        self.url, self.size = url, size
        self._idle: asyncio.Queue[psycopg.AsyncConnection[Any] | None] | None = None
        self._opened: list[psycopg.AsyncConnection[Any]] = []

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._idle is None:
            self._idle = asyncio.Queue()
            for _ in range(self.size):
                self._idle.put_nowait(None)
        conn = await self._idle.get()
        try:
            if conn is None or conn.closed or conn.broken:
                conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
                self._opened.append(conn)
            yield conn
        finally:
            self._idle.put_nowait(conn)

    async def close(self) -> None:
        for conn in self._opened:
            await conn.close()
