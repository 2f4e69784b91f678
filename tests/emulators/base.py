"""Run a source API emulator: one aiohttp process with a request log, injectable faults and OAuth.

An emulator module registers its API routes on an `Emulator` and calls `run()`; `python -m
tests.emulators.<name> --port 0 ...` then binds 127.0.0.1, prints exactly one line `READY <base url>` and
serves until SIGTERM or SIGINT.

Every API request goes through one pipeline, in this order:

    latency_ms sleep -> User-Agent check (if the source demands one) -> auth (401) -> still blocked by an
    earlier 429/403? (refused again; a violation unless inside the in-flight grace) -> primary quota
    exhausted? (refused, blocks until reset) -> storm -> errors_5xx -> the route -> ETag / 304 ->
    quota counted (not for 304) -> truncate -> x-ratelimit-* headers -> request log
    Routes registered with `counted=False` (GitHub's /rate_limit) skip the three rate-limit steps.

Admin routes (JSON, not logged, never faulted):

    GET    /_emulator/log?since=N      {"entries": [...]} with i >= N (each with the request's JSON `body`)
    DELETE /_emulator/log              clear the log and the stats counters
    GET    /_emulator/faults           current fault settings
    POST   /_emulator/faults           merge a JSON object into them (see faults.py); returns the settings
    DELETE /_emulator/faults           switch every fault off
    GET    /_emulator/stats            counts by status and note, violations, token request concurrency
    POST   /_emulator/oauth/expire     expire every issued access token now
    POST   /_emulator/oauth/revoke     invalidate every refresh and access token (re-authorisation needed)

`POST /oauth/token` is the OAuth token endpoint (oauth.py); it is logged but not faulted, apart from
`token_latency_ms`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
import json
import math
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from types import MappingProxyType
from typing import Any

from aiohttp import web

from tests.emulators.faults import Faults, Parser, Storm
from tests.emulators.oauth import DEFAULT_TTL_S, OAuthConfig, TokenIssuer
from tests.emulators.ratelimits import Block, RateLimits
from tests.emulators.requestlog import RequestLog, credential_id

JSON_TYPE = "application/json; charset=utf-8"
_DOCS = "https://docs.github.com/rest"
_RATE_DOCS = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"

# The bodies the pipeline answers with. GitHub's by default (../shared/api-contracts/github.md section 8);
# an emulator of another source passes its own mapping with the same keys.
GITHUB_ERRORS: Mapping[str, Mapping[str, str]] = MappingProxyType({
    "no-auth": {"message": "Requires authentication", "documentation_url": _DOCS},
    "bad-credentials": {"message": "Bad credentials", "documentation_url": _DOCS},
    "no-user-agent": {"message": "Request forbidden by administrative rules. Please make sure your request "
                                 "has a User-Agent header (https://docs.github.com/rest/overview/resources-in"
                                 "-the-rest-api#user-agent-required)."},
    "storm": {"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try "
                         "again.",
              "documentation_url": f"{_RATE_DOCS}#about-secondary-rate-limits"},
    "primary": {"message": "API rate limit exceeded for user ID 1.", "documentation_url": _RATE_DOCS},
    "5xx": {"message": "Server Error"},
    "not-found": {"message": "Not Found", "documentation_url": _DOCS},
})


@dataclass
class Reply:
    """What a route answers; the pipeline adds rate-limit headers, ETag and faults."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    etag: str | None = None  # give it when cached with the body; otherwise computed for 200 answers
    note: str | None = None
    violation: bool = False  # a route's own refusal of a request the credential was told to hold back


def json_reply(payload: Any, status: int = 200, *, note: str | None = None) -> Reply:
    return Reply(status, json.dumps(payload, separators=(",", ":")).encode(), note=note)


Route = Callable[[web.Request], Awaitable[Reply]]
AdminRoute = Callable[[web.Request], Awaitable[Any]]


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() not in ("bearer", "token"):
        return None
    return token.strip() or None


def _basic(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user, password


def _etag_matches(header: str, etag: str) -> bool:
    candidates = {c.strip().removeprefix("W/") for c in header.split(",")}
    return "*" in candidates or etag in candidates


class Emulator:
    """One emulated source: its routes, plus the log, faults, rate limits and token issuer they share."""

    def __init__(self, *, base_url: str, oauth: OAuthConfig | None = None, static_tokens: Sequence[str] = (),
                 extra_faults: dict[str, Parser] | None = None, errors: Mapping[str, Mapping[str, str]] =
                 GITHUB_ERRORS, require_user_agent: bool = False, log_limit: int = 200_000) -> None:
        self.base_url = base_url
        self.log = RequestLog(limit=log_limit)
        self.faults = Faults(extra=dict(extra_faults or {}))
        self.limits = RateLimits()
        self.issuer = TokenIssuer(oauth or OAuthConfig(token_url=f"{base_url}/oauth/token"), list(static_tokens))
        self.errors = errors
        self.require_user_agent = require_user_agent
        self._api: list[tuple[str, str, Route, bool]] = []
        self._admin: list[tuple[str, str, AdminRoute]] = [
            ("GET", "/_emulator/log", self._get_log), ("DELETE", "/_emulator/log", self._clear_log),
            ("GET", "/_emulator/faults", self._get_faults), ("POST", "/_emulator/faults", self._set_faults),
            ("DELETE", "/_emulator/faults", self._clear_faults), ("GET", "/_emulator/stats", self._stats),
            ("POST", "/_emulator/oauth/expire", self._expire), ("POST", "/_emulator/oauth/revoke", self._revoke),
        ]

    def api_route(self, method: str, path: str, route: Route, *, counted: bool = True) -> None:
        """Serve `route` through the fault pipeline; `counted=False` keeps it out of the primary quota."""
        self._api.append((method, path, route, counted))

    def admin_route(self, method: str, path: str, route: AdminRoute) -> None:
        """Serve `route` (returning JSON-able data) outside the pipeline; raise ValueError for a 400."""
        self._admin.append((method, path, route))

    def application(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for method, path, route in self._admin:
            app.router.add_route(method, path, self._admin_handler(route))
        app.router.add_post("/oauth/token", self._token)
        for method, path, route, counted in self._api:
            app.router.add_route(method, path, self._api_handler(route, counted))
        app.router.add_route("*", "/{tail:.*}", self._api_handler(self._not_found, True))
        return app

    def error(self, status: int, kind: str, *, note: str | None = None) -> Reply:
        return json_reply(self.errors[kind], status, note=note or kind)

    async def _not_found(self, request: web.Request) -> Reply:
        return self.error(404, "not-found")

    # -- the API pipeline -------------------------------------------------------------------------------

    def _api_handler(self, route: Route, counted: bool) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            arrival = time.time()
            self.log.request_started()
            try:
                reply, credential, violation = await self._answer(request, route, counted, arrival)
            finally:
                self.log.request_finished()
            asked = await request.read() if request.body_exists else b""
            self.log.record(arrival, request.method, request.path, request.query_string, status=reply.status,
                            credential=credential, size=len(reply.body), violation=violation, note=reply.note,
                            body=asked)
            return web.Response(status=reply.status, body=reply.body or None, headers=reply.headers)
        return handle

    async def _answer(self, request: web.Request, route: Route, counted: bool,
                      arrival: float) -> tuple[Reply, str | None, bool]:
        faults = self.faults
        latency = faults.get("latency_ms")
        if latency:
            await asyncio.sleep(latency / 1000.0)
        now = time.time()
        if self.require_user_agent and not request.headers.get("User-Agent"):
            return self._stamp(self.error(403, "no-user-agent"), None, now), None, False
        token = _bearer(request.headers.get("Authorization"))
        if token is None:
            return self._stamp(self.error(401, "no-auth"), None, now), None, False
        credential = credential_id(token)
        problem = self.issuer.check(token, now)
        if problem:
            return self._stamp(self.error(401, "bad-credentials", note=problem), None, now), credential, False

        if counted:  # like GitHub's /rate_limit, an uncounted route answers even while a credential waits
            refusal = self._rate_limited(credential, arrival, now)
            if refusal is not None:
                return refusal
        errors = faults.get("errors_5xx")
        if errors is not None and errors.every.due():
            reply = self.error(errors.status, "5xx")
        else:
            reply = await route(request)
            if reply.status == 200:
                etag = reply.etag or '"' + hashlib.md5(reply.body).hexdigest() + '"'
                reply.headers["ETag"] = etag
                if_none_match = request.headers.get("If-None-Match")
                if if_none_match and _etag_matches(if_none_match, etag):
                    reply = Reply(304, b"", {"ETag": etag}, note="etag-hit")
        if counted and reply.status != 304:
            self.limits.count(credential, now)
        truncate = faults.get("truncate")
        if reply.status == 200 and reply.body and truncate is not None and truncate.due():
            # A cut body must not be cached against the full body's tag.
            reply = Reply(200, reply.body[: len(reply.body) // 2], note="truncated")
        return self._stamp(reply, credential, now), credential, reply.violation

    def _rate_limited(self, credential: str | None, arrival: float,
                      now: float) -> tuple[Reply, str | None, bool] | None:
        """A refusal if `credential` must wait (blocked, quota spent, or the storm strikes now), else None."""
        block = self.limits.blocked(credential, arrival)
        if block is not None:
            violation = arrival >= block.issued_at + self.faults.grace_s()
            reply = self._refusal(block, now, note="violation" if violation else "in-flight")
            return self._stamp(reply, credential, now), credential, violation
        if self.limits.exhausted(credential, now):
            reply = self._refusal(self.limits.refuse_primary(credential, now), now, note="rate-limited")
            return self._stamp(reply, credential, now), credential, False
        storm: Storm | None = self.faults.get("storm")
        if storm is not None and storm.every.due():
            return self._stamp(self._storm(storm, credential, now), credential, now), credential, False
        return None

    def _stamp(self, reply: Reply, credential: str | None, now: float) -> Reply:
        headers = self.limits.headers(credential, now)
        if reply.status != 304:
            headers["Content-Type"] = JSON_TYPE
        headers.update(reply.headers)
        reply.headers = headers
        return reply

    def _storm(self, storm: Storm, credential: str | None, now: float) -> Reply:
        reply = self.error(storm.status, "storm")
        if storm.retry_after == "http-date":
            # An HTTP-date has whole seconds: the credential is told to wait until exactly that second.
            until = float(math.ceil(now + storm.seconds))
            reply.headers["Retry-After"] = formatdate(until, usegmt=True)
        else:
            until = now + storm.seconds
            if storm.retry_after is not None:
                reply.headers["Retry-After"] = str(storm.retry_after)
        self.limits.refuse_secondary(credential, now, status=storm.status, until=until,
                                     advertise=storm.retry_after is not None)
        return reply

    def _refusal(self, block: Block, now: float, *, note: str) -> Reply:
        if block.kind == "primary":
            return self.error(block.status, "primary", note=note)
        reply = self.error(block.status, "storm", note=note)
        if block.advertise:
            reply.headers["Retry-After"] = str(max(1, math.ceil(block.until - now)))
        return reply

    # -- OAuth token endpoint ---------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        arrival = time.time()
        self.log.token_request_started()
        try:
            delay = self.faults.get("token_latency_ms")
            if delay:
                await asyncio.sleep(delay / 1000.0)
            form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
            ttl = self.faults.get("token_ttl_s") or DEFAULT_TTL_S
            grant = self.issuer.grant(form, _basic(request.headers.get("Authorization")), now=time.time(),
                                      ttl_s=ttl)
        finally:
            self.log.token_request_finished()
        body = json.dumps(grant.body).encode()
        self.log.record(arrival, request.method, request.path, request.query_string, status=grant.status,
                        credential=None, size=len(body), violation=False, note=grant.note)
        return web.Response(status=grant.status, body=body,
                            headers={"Content-Type": JSON_TYPE, "Cache-Control": "no-store"})

    # -- admin routes -----------------------------------------------------------------------------------

    def _admin_handler(self, route: AdminRoute) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            try:
                payload = await route(request)
            except ValueError as exc:
                return web.json_response({"error": str(exc)}, status=400)
            return web.json_response(payload)
        return handle

    async def _get_log(self, request: web.Request) -> Any:
        try:
            since = int(request.query.get("since", "0"))
        except ValueError:
            raise ValueError("since must be an integer") from None
        return {"entries": self.log.entries(since)}

    async def _clear_log(self, request: web.Request) -> Any:
        self.log.clear()
        return {"cleared": True}

    async def _get_faults(self, request: web.Request) -> Any:
        return self.faults.settings()

    async def _set_faults(self, request: web.Request) -> Any:
        try:
            changes = await request.json()
        except json.JSONDecodeError:
            raise ValueError("the faults body must be JSON") from None
        self.faults.update(changes)
        if "primary_limit" in changes:
            self.limits.configure(self.faults.get("primary_limit"))
        return self.faults.settings()

    async def _clear_faults(self, request: web.Request) -> Any:
        self.faults.reset()
        self.limits.configure(None)
        return self.faults.settings()

    async def _stats(self, request: web.Request) -> Any:
        return {**self.log.stats(), "valid_refresh_tokens": self.issuer.valid_refresh_tokens()}

    async def _expire(self, request: web.Request) -> Any:
        return {"expired": self.issuer.expire_access_tokens()}

    async def _revoke(self, request: web.Request) -> Any:
        self.issuer.revoke_all()
        return {"revoked": True}


# -- the process ----------------------------------------------------------------------------------------

def _base_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--token", action="append", default=[], help="a static access token (repeatable)")
    parser.add_argument("--client-id")
    parser.add_argument("--client-secret")
    parser.add_argument("--refresh-token", help="the initial refresh token")
    parser.add_argument("--rotate-refresh-tokens", action=argparse.BooleanOptionalAction, default=True,
                        help="each refresh token works once (default on)")
    parser.add_argument("--service-account-email", help="the `iss` jwt-bearer assertions must carry")
    parser.add_argument("--service-account-public-key", type=Path, help="PEM file verifying jwt-bearer assertions")
    parser.add_argument("--log-limit", type=int, default=200_000, help="request log entries kept in memory")


Install = Callable[[argparse.Namespace, str], Emulator]


def run(name: str, *, add_arguments: Callable[[argparse.ArgumentParser], None], install: Install,
        argv: list[str] | None = None) -> None:
    """Parse the command line, build the emulator with `install(args, base_url)` and serve it."""
    parser = argparse.ArgumentParser(prog=f"python -m tests.emulators.{name}")
    _base_arguments(parser)
    add_arguments(parser)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args, install))


def oauth_config(args: argparse.Namespace, base_url: str) -> OAuthConfig:
    key = args.service_account_public_key
    return OAuthConfig(token_url=f"{base_url}/oauth/token", client_id=args.client_id,
                       client_secret=args.client_secret, refresh_token=args.refresh_token,
                       rotate_refresh_tokens=args.rotate_refresh_tokens,
                       service_account_email=args.service_account_email,
                       service_account_public_key=key.read_bytes() if key else None)


async def _serve(args: argparse.Namespace, install: Install) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    emulator = install(args, base_url)
    runner = web.AppRunner(emulator.application(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    await web.SockSite(runner, sock, backlog=1024).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {base_url}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
