"""The Odoo emulator's request pipeline: base.py's with Odoo's error bodies and credentials, and `page_write`.

Odoo has no rate limiter and sends no rate-limit headers (../shared/api-contracts/odoo.md section 7): storms
and 5xx faults answer as a proxy in front of it would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.emulators.base import Emulator, Reply, Route, json_reply
from tests.emulators.faults import Every, Parser, parse_every
from tests.emulators.odoo.errors import NOT_FOUND
from tests.emulators.odoo.methods import Pool
from tests.emulators.requestlog import credential_id


@dataclass
class PageWrite:
    """Writes that land between two pages of a read (a concurrent user)."""

    every: Every
    count: int
    action: str


def _page_write(value: Any, name: str) -> PageWrite:
    if not isinstance(value, dict) or set(value) - {"every", "times", "count", "action"}:
        raise ValueError(f'{name} must look like {{"every": k, "times": m, "count": n, "action": "touch"}}')
    every = parse_every({"every": value.get("every"), "count": value.get("times")}, name)
    count, action = value.get("count", 1), value.get("action", "touch")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"{name}.count must be an integer >= 1")
    if action not in ("touch", "insert"):
        raise ValueError(f"{name}.action must be touch or insert")
    return PageWrite(every, count, action)


PAGE_FAULTS: dict[str, Parser] = {"page_write": _page_write}
ODOO_ERRORS: dict[str, dict[str, Any]] = {
    "no-auth": {"name": "werkzeug.exceptions.Unauthorized", "message": "Invalid apikey"},
    "bad-credentials": {"name": "werkzeug.exceptions.Unauthorized", "message": "Invalid apikey"},
    "no-user-agent": {"message": "Forbidden"},
    "storm": {"message": "Too Many Requests"},  # a proxy's answer: Odoo has no rate limiter (odoo.md section 7)
    "primary": {"message": "Too Many Requests"},
    "5xx": {"message": "Bad Gateway"},  # worker timeouts surface as 502/504 from the proxy (odoo.md section 7)
    "not-found": {"jsonrpc": "2.0", "id": None, "error": {"code": 404, "message": "404: Not Found", "data": {
        "name": "werkzeug.exceptions.NotFound", "message": NOT_FOUND, "arguments": [], "context": {},
        "debug": ""}}},
}


class OdooEmulator(Emulator):
    """The base pipeline (latency, storms, 5xx, truncation, log) with Odoo's own auth in the routes."""

    def __init__(self, *, pool: Pool, **kwargs: Any) -> None:
        super().__init__(extra_faults=PAGE_FAULTS, **kwargs)
        self.pool = pool

    def error(self, status: int, kind: str, *, note: str | None = None) -> Reply:
        return json_reply(ODOO_ERRORS[kind], status, note=note or kind)

    def application(self) -> web.Application:
        app = super().application()

        async def close_pool(_: web.Application) -> None:
            await self.pool.close()
        app.on_cleanup.append(close_pool)
        return app

    async def _answer(self, request: web.Request, route: Route, counted: bool,
                      arrival: float) -> tuple[Reply, str | None, bool]:
        latency = self.faults.get("latency_ms")
        if latency:
            await asyncio.sleep(latency / 1000.0)
        now = time.time()
        credential = credential_id(await _secret(request))
        refusal = self._rate_limited(credential, arrival, now)
        if refusal is not None:
            return refusal
        errors = self.faults.get("errors_5xx")
        reply = self.error(errors.status, "5xx") if errors is not None and errors.every.due() else \
            await route(request)
        self.limits.count(credential, now)
        truncate = self.faults.get("truncate")
        if reply.status == 200 and reply.body and truncate is not None and truncate.due():
            reply = Reply(200, reply.body[: len(reply.body) // 2], note="truncated")
        return self._stamp(reply, credential, now), credential, reply.violation

    def _stamp(self, reply: Reply, credential: str | None, now: float) -> Reply:
        # Odoo sends no rate-limit headers, so the base pipeline's GitHub-style ones are left out.
        reply.headers = {"Content-Type": "application/json; charset=utf-8", **reply.headers}
        return reply


async def _secret(request: web.Request) -> str | None:
    """What identifies the caller: the API key, the session id, or the password inside an RPC body."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if request.cookies.get("session_id"):
        return request.cookies["session_id"]
    if request.path == "/jsonrpc" and request.body_exists:
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            body = json.loads(await request.read())
            params = body.get("params") if isinstance(body, dict) else None
            args = params.get("args") if isinstance(params, dict) else None
            if isinstance(args, list) and len(args) > 2 and isinstance(args[2], str):
                return args[2]
    return None
