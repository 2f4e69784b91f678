"""Calling one Odoo's model methods over its external APIs, per ../shared/api-contracts/odoo.md.

    jsonrpc            POST /jsonrpc: `common.authenticate` once for the uid, then `object.execute_kw`
                       with db, uid and password (or API key) on every call (odoo.md s.2, s.3)
    jsonrpc, session   POST /web/session/authenticate for the `session_id` cookie, then
                       /web/dataset/call_kw/<model>/<method> with it; an expired session (error code 100)
                       logs in again, once (odoo.md s.2, s.8)
    json2              POST /json/2/<model>/<method> with `Authorization: bearer <key>`; the body holds the
                       method's parameters by name (odoo.md s.2, s.3)

Requests go through httpkit's Requester: egress policy, the credential's budget, retries with backoff of
5xx and timeouts (a proxy's 502/504 when an Odoo worker times out, odoo.md s.7). JSON-RPC answers HTTP 200 with an
`error` member (odoo.md s.8); it becomes an HttpFailed carrying Odoo's own message, never its traceback (`debug`),
with advice for AccessDenied and AccessError. Secret values are masked in every message.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.cookies import SimpleCookie
from typing import Any

import aiohttp

from connectors.httpkit import (
    DEFAULT_RULES, CredentialHandle, CredentialRef, EgressPolicy, ErrorRule, HttpFailed, PageRequest, Requester,
    Response, loads,
)
from connectors.odoo.spec import OdooApiSource
from engine.core.errors import TransientError
from engine.core.secrets import Redactor, SecretStore
from engine.core.spec import NoAuth

RULES = (
    ErrorRule(status=(401,), action="fail",
              message="Odoo refused the credential: wrong login/password or API key (API keys expire; make a new "
                      "one under Preferences > Account Security and store it with `ipai secret set`)"),
    ErrorRule(status=(403,), action="fail",
              message="the Odoo user may not read this model: grant it read access, or leave the stream out"),
    ErrorRule(status=(404,), action="fail",
              message="this Odoo has no such model or route: is the model's app installed, the `database` "
                      "right, and the server Odoo 19+ (JSON-2)?"),
)
"""JSON-2's HTTP statuses (odoo.md s.8), before httpkit's defaults (5xx and timeouts retried)."""
TRANSIENT = ("SerializationFailure", "TransactionRollbackError", "LockNotAvailable", "DeadlockDetected")
"""Odoo errors a concurrent update causes: the read task is tried again."""


class SessionExpired(HttpFailed):
    """Odoo's error code 100, "Odoo Session Expired" (odoo.md s.8): a web session logs in again, once; an
    expiry that escapes (any other call, or the second time) fails the partition like any HttpFailed."""


class OdooRpc:
    """One Odoo's model methods, called as the source's `mode` says; lives inside one event loop."""

    def __init__(self, source: OdooApiSource, secrets: dict[str, str], requester: Requester,
                 redact: Redactor) -> None:
        self.source, self.requester, self.redact = source, requester, redact
        ref = source.api_key if source.mode == "json2" or source.password is None else source.password
        assert ref is not None, "validated by OdooApiSource"
        self.secret_name, self.secret = ref.secret, secrets[ref.secret]
        self.uid: int | None = None
        self.cookie: str | None = None
        self.ids = itertools.count(1)

    async def call(self, model: str, method: str, domain: list[Any] | None = None, **kwargs: Any) -> Any:
        """Return `model.method(domain, **kwargs)`; the domain goes positionally, as every version takes it."""
        s = self.source
        what = f"{model}.{method}"
        if s.mode == "json2":
            body = {**({"domain": domain} if domain is not None else {}), **kwargs}
            request = PageRequest(f"{s.base_url}/json/2/{model}/{method}", {}, body, "POST")
            return self._json(await self.requester.send(request))
        args = [domain] if domain is not None else []
        if not s.session:
            if self.uid is None:
                await self._authenticate()
            rpc = {"service": "object", "method": "execute_kw",
                   "args": [s.database, self.uid, self.secret, model, method, args, kwargs]}
            return (await self._post("/jsonrpc", rpc, what, model))[0]
        params = {"model": model, "method": method, "args": args, "kwargs": kwargs}
        for attempt in (1, 2):
            if self.cookie is None:
                await self._session_login()
            try:
                return (await self._post(f"/web/dataset/call_kw/{model}/{method}", params, what, model))[0]
            except SessionExpired:
                self.cookie = None  # expired or revoked: log in again, once (odoo.md s.2)
                if attempt == 2:
                    raise HttpFailed(f"Odoo {s.base_url}: {what}: the web session expired again right after "
                                     "logging in; check the server's session store, or use session: false") from None
        raise AssertionError("unreachable")

    async def _authenticate(self) -> None:
        s = self.source
        uid, _ = await self._post("/jsonrpc", {"service": "common", "method": "authenticate",
                                               "args": [s.database, s.login, self.secret, {}]}, "authenticate")
        if isinstance(uid, bool) or not isinstance(uid, int):  # false on bad credentials (odoo.md s.2)
            raise HttpFailed(self._refused())
        self.uid = uid

    async def _session_login(self) -> None:
        s = self.source
        info, response = await self._post("/web/session/authenticate",
                                          {"db": s.database, "login": s.login, "password": self.secret},
                                          "session authenticate")
        if not isinstance(info, dict) or not info.get("uid"):
            # {"uid": null}: the user has two-factor authentication, which a web session cannot pass (odoo.md s.2).
            raise HttpFailed(f"Odoo {s.base_url}: the web session of {s.login!r} needs a second factor; use an API "
                             "key with session: false (or mode json2)")
        morsel = SimpleCookie(response.headers.get("set-cookie", "")).get("session_id")
        if morsel is None:
            raise HttpFailed(f"Odoo {s.base_url}: /web/session/authenticate set no session_id cookie")
        self.cookie = morsel.value

    async def _post(self, path: str, params: dict[str, Any], what: str,
                    model: str | None = None) -> tuple[Any, Response]:
        body = {"jsonrpc": "2.0", "method": "call", "id": next(self.ids), "params": params}
        cookie = {"Cookie": f"session_id={self.cookie}"} if self.cookie and path.startswith("/web/dataset") else None
        response = await self.requester.send(PageRequest(self.source.base_url + path, {}, body, "POST"),
                                             extra_headers=cookie)
        data = self._json(response)
        if not isinstance(data, dict) or not ("result" in data or "error" in data):
            raise HttpFailed(f"{self.redact(response.url)} answered no JSON-RPC envelope (result or error); "
                             "is `base_url` an Odoo server?")
        if data.get("error") is not None:
            raise self._error(data["error"], what, model)
        return data.get("result"), response

    def _json(self, response: Response) -> Any:
        try:
            return loads(response.body)
        except ValueError as exc:
            snippet = self.redact(response.body[:200].decode("utf-8", errors="replace"))
            raise HttpFailed(f"{self.redact(response.url)} answered malformed JSON ({exc}); the body begins: "
                             f"{snippet!r}") from None

    def _error(self, error: Any, what: str, model: str | None) -> Exception:
        """The JSON-RPC error envelope (odoo.md s.8) as our error; Odoo's `debug` traceback is left out."""
        s = self.source
        err: dict[str, Any] = error if isinstance(error, dict) else {"message": str(error)}
        data: dict[str, Any] = err["data"] if isinstance(err.get("data"), dict) else {}
        name = str(data.get("name") or "")
        message = self.redact(str(data.get("message") or err.get("message") or "(no message)"))
        kind = name.rsplit(".", 1)[-1]
        if err.get("code") == 100:
            return SessionExpired(message)
        where = f"Odoo {s.base_url}: {what}"
        if kind == "AccessDenied":
            return HttpFailed(f"{where}: {message}; {self._refused()}")
        if kind == "AccessError":
            return HttpFailed(f"{where}: {message}; the user {s.login or '(API key)'!r} may not read {model}: grant "
                              "it read access (Settings > Users > groups), or leave the stream out (`streams:`)")
        if any(t in name for t in TRANSIENT):
            return TransientError(f"{where}: {kind}: {message}")
        return HttpFailed(f"{where} failed: {kind or err.get('message', 'error')}: {message}")

    def _refused(self) -> str:
        s = self.source
        return (f"Odoo {s.base_url} refused login {s.login!r} on database {s.database!r}: wrong login/password or "
                f"API key; check `login:` and store the secret again with `ipai secret set {self.secret_name}`")


@asynccontextmanager
async def connect(source: OdooApiSource, egress: EgressPolicy, secrets: dict[str, str],
                  store: SecretStore) -> AsyncIterator[OdooRpc]:
    """An `OdooRpc` on a fresh HTTP session, drawing on the server's shared request budget."""
    redact = Redactor.of(secrets.values())
    ref = CredentialRef.of(scope=f"odoo {source.base_url}", auth=NoAuth(), rate_limit=source.rate_limit,
                           max_wait_s=source.retry.max_wait_s, store=store, egress=egress, secrets=secrets)
    actor = CredentialHandle(lambda: ref.handle(secrets))
    headers: dict[str, str] = {}
    if source.mode == "json2" and source.api_key is not None:
        headers = {"Authorization": f"bearer {secrets[source.api_key.secret]}", "X-Odoo-Database": source.database}
    # Cookies are set by hand (only the session's, only on call_kw): aiohttp's jar keeps none for IP hosts.
    connector = aiohttp.TCPConnector(limit=8, resolver=egress.resolver())
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as session:
        requester = Requester(session=session, actor=actor, tokens=None, headers=headers, params={},
                              rules=RULES + DEFAULT_RULES, retry=source.retry, rate_limit=source.rate_limit,
                              egress=egress, redact=redact)
        yield OdooRpc(source, secrets, requester, redact)
