"""Odoo external API emulator over an Odoo-shaped PostgreSQL schema, per ../shared/api-contracts/odoo.md.

    python -m tests.emulators.odoo --port 0 --database-url postgresql://... [--schema public] [--db acme]
        [--login admin] [--password admin] [--api-key KEY] [--uid 2] [--server-version 17.0]

The data is whatever `odoo_schema.create` put in `--schema`; every request reads it live (autocommit), so a
test may change the tables between requests. Models, field types, `_order` and display names come from
`odoo_schema.MODELS`. The pieces: odoo_sql.py (domains, orders, wire values), odoo_methods.py (the model
methods), odoo_pipeline.py (the request pipeline and `page_write`), odoo_errors.py (Odoo's exceptions).

API routes (odoo.md section 1):
    POST /jsonrpc                          JSON-RPC 2.0; services common (version, login, authenticate),
                                           object (execute_kw, execute), db (list)
    POST /web/session/authenticate         params {db, login, password} -> session info + session_id cookie
    POST /web/dataset/call_kw[/<path>]     params {model, method, args, kwargs} with the session_id cookie
    POST /json/2/<model>/<method>          `Authorization: bearer <api key>`; body keys = parameter names
Model methods: search_read, search, search_count, read, fields_get. Domains take = != > >= < <= in, not in,
like, ilike, not like, not ilike, =like, =ilike, prefix & | ! (implicit & between terms), dotted paths
through a many2one, and a string against a many2one (a name search on the target's display name).

Deliberate simplifications: ordering by a many2one orders by the target id (Odoo uses the target's `_order`);
every ORDER BY ends with `id` so that offsets are stable; no record rules or multi-company filtering (every
row is visible, as to an admin); `read` skips ids that do not exist, as Odoo's `read` does; a NULL integer,
float or monetary reads as 0, as Odoo's numeric fields convert it (odoo.md section 4 only says "number").

Admin routes beyond base.py's (each commits to the database):
    POST /_emulator/odoo/touch    {"model": "res.partner", "ids": [..], "at": "YYYY-MM-DD HH:MM:SS"?}
    POST /_emulator/odoo/insert   {"count": n, "at": ...?}   n new res.partner rows -> {"ids": [..]}
    POST /_emulator/odoo/archive  {"model": ..., "ids": [..], "at": ...?}
    POST /_emulator/odoo/delete   {"model": ..., "ids": [..]}
    POST /_emulator/odoo/sessions/expire    every web session id stops working (error code 100)
Faults beyond base.py's:
    page_write  {"every": k, "times": m, "count": n, "action": "touch"|"insert"}: on every k-th search or
                search_read (at most m times), before answering, touch the first n records that request's
                domain and order select (write_date := now) or insert n partners.
The base pipeline's bearer check is replaced by Odoo's own auth; credentials for rate-limit faults are the
API key, the session id or the RPC password. The request log keeps each JSON body (model, method, domain,
offset, limit; also the RPC password, which is a test secret) and notes `<model>.<method>` or the error.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import secrets
from collections.abc import Callable
from typing import Any

import psycopg
from aiohttp import web
from psycopg import sql

from tests.emulators.odoo import schema as odoo_schema
from tests.emulators.base import Emulator, Reply, json_reply, run
from tests.emulators.odoo.errors import NOT_FOUND, OdooError, access_denied, session_expired, type_error
from tests.emulators.odoo.methods import Models, Pool
from tests.emulators.odoo.models import MODELS, Model
from tests.emulators.odoo.pipeline import OdooEmulator, PageWrite


def _rpc_result(request_id: Any, result: Any, note: str | None) -> Reply:
    return json_reply({"jsonrpc": "2.0", "id": request_id, "result": result}, note=note)


def _rpc_error(request_id: Any, exc: OdooError) -> Reply:
    # odoo.md section 8: HTTP 200 with an `error` member; code 200 "Odoo Server Error", or 100 on session expiry.
    return json_reply({"jsonrpc": "2.0", "id": request_id, "error": {"code": exc.code, "message": exc.title,
                                                                      "data": exc.data()}},
                      note=exc.name.rsplit(".", 1)[-1])


def _db_error(exc: psycopg.Error) -> OdooError:
    return OdooError(f"psycopg2.errors.{type(exc).__name__}", str(exc).strip(), status=500)


class Odoo:
    """The Odoo routes: JSON-RPC, the web session and JSON-2 over one schema, with shared credentials."""

    def __init__(self, emulator: OdooEmulator, args: argparse.Namespace) -> None:
        self.emulator, self.args = emulator, args
        self.pool = emulator.pool
        self.models = Models(self.pool, args.schema)
        self.sessions: dict[str, int] = {}

    def install(self) -> None:
        em = self.emulator
        em.api_route("POST", "/jsonrpc", self.jsonrpc)
        em.api_route("POST", "/web/session/authenticate", self.session_authenticate)
        em.api_route("POST", "/web/dataset/call_kw", self.call_kw)
        em.api_route("POST", "/web/dataset/call_kw/{path:.*}", self.call_kw)
        em.api_route("POST", "/json/2/{model}/{method}", self.json2)
        for path, route in (("touch", self.admin_touch), ("insert", self.admin_insert),
                            ("archive", self.admin_archive), ("delete", self.admin_delete),
                            ("sessions/expire", self.admin_expire)):
            em.admin_route("POST", f"/_emulator/odoo/{path}", route)

    def valid_password(self, password: Any) -> bool:
        # odoo.md section 2: since 14.0 an API key is accepted wherever the password is.
        return isinstance(password, str) and password in {self.args.password, self.args.api_key} - {None}

    def version(self) -> dict[str, Any]:
        major, _, minor = self.args.server_version.partition(".")
        info = [int(major) if major.isdigit() else major, int(minor or 0) if minor.isdigit() else 0, 0, "final",
                0, ""]
        return {"server_version": self.args.server_version, "server_version_info": info,
                "server_serie": self.args.server_version, "protocol_version": 1}

    def check_db(self, db: Any) -> None:
        if db != self.args.db:
            raise OdooError("psycopg2.OperationalError",
                            f'connection to server at "localhost" (127.0.0.1), port 5432 failed: FATAL:  database '
                            f'"{db}" does not exist', status=404)

    async def _call(self, model: Any, method: Any, args: Any, kwargs: Any) -> Any:
        try:
            return await self.models.call(model, method, args, kwargs, before=self._page_write)
        except psycopg.Error as exc:
            raise _db_error(exc) from None

    # -- /jsonrpc ---------------------------------------------------------------------------------------

    async def jsonrpc(self, request: web.Request) -> Reply:
        request_id = None
        try:
            body = await _json_body(request)
            request_id = body.get("id")
            params = body.get("params") or {}
            service, method, args = params.get("service"), params.get("method"), params.get("args") or []
            result, note = await self._service(service, method, args)
        except OdooError as exc:
            return _rpc_error(request_id, exc)
        return _rpc_result(request_id, result, note)

    async def _service(self, service: Any, method: Any, args: list[Any]) -> tuple[Any, str]:
        if service == "common" and method == "version":
            return self.version(), "common.version"
        if service == "common" and method in ("login", "authenticate"):
            if len(args) < 3:
                raise type_error(f"{method}() missing required positional arguments")
            self.check_db(args[0])
            ok = args[1] == self.args.login and self.valid_password(args[2])
            return (self.args.uid if ok else False), f"common.{method}"  # uid, or false (odoo.md section 2)
        if service == "db" and method == "list":
            return [self.args.db], "db.list"
        if service == "object" and method in ("execute_kw", "execute"):
            if len(args) < 5:
                raise type_error(f"{method}() missing required positional arguments")
            db, uid, password, model, model_method = args[:5]
            self.check_db(db)
            if uid != self.args.uid or not self.valid_password(password):
                raise access_denied()
            call_args, call_kwargs = (args[5] if len(args) > 5 else [], args[6] if len(args) > 6 else {}) \
                if method == "execute_kw" else (list(args[5:]), {})
            return await self._call(model, model_method, call_args, call_kwargs), f"{model}.{model_method}"
        raise OdooError("builtins.Exception", f"No such service method {service}.{method}")

    # -- web session ------------------------------------------------------------------------------------

    async def session_authenticate(self, request: web.Request) -> Reply:
        request_id = None
        try:
            body = await _json_body(request)
            request_id = body.get("id")
            params = body.get("params") or {}
            self.check_db(params.get("db"))
            if params.get("login") != self.args.login or not self.valid_password(params.get("password")):
                raise access_denied()
            info = await self._session_info()
        except OdooError as exc:
            return _rpc_error(request_id, exc)
        session = secrets.token_urlsafe(30)
        self.sessions[session] = self.args.uid
        reply = _rpc_result(request_id, info, "session.authenticate")
        # odoo.md section 2: Set-Cookie session_id, httponly (Odoo keeps a session a week).
        reply.headers["Set-Cookie"] = f"session_id={session}; HttpOnly; Max-Age=604800; Path=/; SameSite=Lax"
        return reply

    async def _session_info(self) -> dict[str, Any]:
        uid = self.args.uid
        query = sql.SQL("select p.name, p.id, u.company_id from {} u join {} p on p.id = u.partner_id "
                        "where u.id = %s").format(sql.Identifier(self.args.schema, "res_users"),
                                                  sql.Identifier(self.args.schema, "res_partner"))
        try:
            async with self.pool.connection() as conn:
                row = await (await conn.execute(query, (uid,))).fetchone()
        except psycopg.Error as exc:
            raise _db_error(exc) from None
        name, partner, company = row if row else ("Administrator", False, 1)
        return {"uid": uid, "is_system": True, "is_admin": True, "db": self.args.db, "name": name,
                "username": self.args.login, "partner_display_name": name, "partner_id": partner,
                "company_id": company, "user_context": {"lang": "en_US", "tz": "Europe/Brussels", "uid": uid},
                **{k: v for k, v in self.version().items() if k != "protocol_version"},
                "web.base.url": self.emulator.base_url}

    async def call_kw(self, request: web.Request) -> Reply:
        request_id = None
        try:
            body = await _json_body(request)
            request_id = body.get("id")
            if self.sessions.get(request.cookies.get("session_id", "")) is None:
                raise session_expired()
            params = body.get("params") or {}
            model, method = params.get("model"), params.get("method")
            result = await self._call(model, method, params.get("args") or [], params.get("kwargs") or {})
        except OdooError as exc:
            return _rpc_error(request_id, exc)
        return _rpc_result(request_id, result, f"{model}.{method}")

    # -- JSON-2 -----------------------------------------------------------------------------------------

    async def json2(self, request: web.Request) -> Reply:
        model, method = request.match_info["model"], request.match_info["method"]
        try:
            scheme, _, key = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not self.args.api_key or key.strip() != self.args.api_key:
                raise OdooError("werkzeug.exceptions.Unauthorized", "Invalid apikey", status=401)  # odoo.md section 8
            database = request.headers.get("X-Odoo-Database")
            if database is not None and database != self.args.db:  # unconfirmed: the status for a wrong db
                raise OdooError("werkzeug.exceptions.NotFound", NOT_FOUND, status=404)
            if model not in MODELS:  # unconfirmed: 404 for an unknown model or method
                raise OdooError("werkzeug.exceptions.NotFound", NOT_FOUND, status=404)
            body = await _json_body(request)
            kwargs = {k: v for k, v in body.items() if k != "ids"}
            args = [body.get("ids") or []] if method == "read" else []
            if method != "read" and body.get("ids"):
                raise type_error(f"BaseModel.{method}() is a model method: ids must be empty")
            result = await self._call(model, method, args, kwargs)
        except OdooError as exc:
            # odoo.md section 8: real HTTP status and the bare {name, message, arguments, context, debug} body.
            return json_reply(exc.data(), exc.status, note=exc.name.rsplit(".", 1)[-1])
        return json_reply(result, note=f"{model}.{method}")

    # -- faults and admin routes ------------------------------------------------------------------------

    async def _page_write(self, model: Model, bound: dict[str, Any], context: dict[str, Any]) -> None:
        fault: PageWrite | None = self.emulator.faults.get("page_write")
        if fault is None or not fault.every.due():
            return
        if fault.action == "insert":
            await self._write(odoo_schema.insert_partners, fault.count, None)
            return
        first = dict(bound, offset=0, limit=fault.count)
        rows = await self.models.search(model, first, context, count=False, fields=["id"])
        await self._write(odoo_schema.touch, model.table, [r["id"] for r in rows], None)

    async def _write(self, change: Callable[..., Any], *args: Any) -> Any:
        def run_change() -> Any:
            with psycopg.connect(self.args.database_url) as conn:
                return change(conn, *args, schema=self.args.schema)
        return await asyncio.to_thread(run_change)

    async def _admin_body(self, request: web.Request, *keys: str) -> dict[str, Any]:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            raise ValueError("the body must be JSON") from None
        if not isinstance(body, dict) or any(k not in body for k in keys):
            raise ValueError(f"the body must be an object with {list(keys)}")
        if "ids" in keys and not (isinstance(body["ids"], list) and all(
                isinstance(i, int) and not isinstance(i, bool) for i in body["ids"])):
            raise ValueError("ids must be a list of integers")
        if "model" in keys and body["model"] not in MODELS:
            raise ValueError(f"unknown model {body['model']!r}; known: {sorted(MODELS)}")
        return body

    async def admin_touch(self, request: web.Request) -> Any:
        body = await self._admin_body(request, "model", "ids")
        at = _moment(body.get("at"))
        touched = await self._write(odoo_schema.touch, MODELS[body["model"]].table, body["ids"], at)
        return {"touched": touched}

    async def admin_insert(self, request: web.Request) -> Any:
        body = await self._admin_body(request)
        count = body.get("count", 1)
        if not isinstance(count, int) or count < 1:
            raise ValueError("count must be an integer >= 1")
        return {"model": "res.partner",
                "ids": await self._write(odoo_schema.insert_partners, count, _moment(body.get("at")))}

    async def admin_archive(self, request: web.Request) -> Any:
        body = await self._admin_body(request, "model", "ids")
        await self._write(odoo_schema.archive, MODELS[body["model"]].table, body["ids"], _moment(body.get("at")))
        return {"archived": len(body["ids"])}

    async def admin_delete(self, request: web.Request) -> Any:
        body = await self._admin_body(request, "model", "ids")
        try:
            await self._write(odoo_schema.delete, MODELS[body["model"]].table, body["ids"])
        except psycopg.errors.IntegrityError as exc:
            raise ValueError(f"Odoo would refuse this delete: {exc}") from None
        return {"deleted": len(body["ids"])}

    async def admin_expire(self, request: web.Request) -> Any:
        expired = len(self.sessions)
        self.sessions.clear()
        return {"expired": expired}


def _moment(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"at must be 'YYYY-MM-DD HH:MM:SS' (UTC), got {value!r}") from None


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read() or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise OdooError("werkzeug.exceptions.BadRequest", "400 Bad Request: Invalid JSON data", status=400) \
            from None
    if not isinstance(body, dict):
        raise OdooError("werkzeug.exceptions.BadRequest", "400 Bad Request: Invalid JSON data", status=400)
    return body


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", required=True, help="PostgreSQL holding the odoo_schema tables")
    parser.add_argument("--schema", default="public")
    parser.add_argument("--db", default="acme", help="the Odoo database name callers must give")
    parser.add_argument("--login", default="admin")
    parser.add_argument("--password", default="admin")
    parser.add_argument("--api-key", help="JSON-2 bearer key, also accepted as the RPC password")
    parser.add_argument("--uid", type=int, default=2)
    parser.add_argument("--server-version", default="17.0")


def _install(args: argparse.Namespace, base_url: str) -> Emulator:
    emulator = OdooEmulator(pool=Pool(args.database_url), base_url=base_url, log_limit=args.log_limit)
    Odoo(emulator, args).install()
    return emulator


def serve() -> None:
    """`python -m tests.emulators.odoo`: run the emulator with the command line's options."""
    run("odoo", add_arguments=_arguments, install=_install)
