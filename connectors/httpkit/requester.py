"""Sending one request well: budget, credentials, egress policy, redirects, the error table, retries.

Redirects are followed by hand (at most MAX_REDIRECTS), each hop checked by the egress policy. Credentials
stay with the origin they were given for: once a redirect changes scheme, host or port, `Authorization`,
`Proxy-Authorization`, `Cookie`, the auth's own header (`auth_headers`) and its query parameters
(`auth_params`, also taken out of the redirect's URL) are no longer sent, and a request body (which may carry
a login) is not sent to the other origin at all.

Pages are fetched with aiohttp inside each read task, several at a time on one event loop. aiohttp
rather than httpx here because it is measured: ~200k rows/s of issue-like pages per process against
~50k for httpx's sync client and ~25k for its AsyncClient (ARCHITECTURE.md); on two cores the HTTP
client's own CPU is what limits parallel pages.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import aiohttp
import ray
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from connectors.httpkit.auth import AccessToken
from connectors.httpkit.budget import SLOW_BELOW
from connectors.httpkit.components import ErrorRule, RateLimit, RetryPolicy
from connectors.httpkit.egress import EgressPolicy, EgressRefused
from connectors.httpkit.errors import (
    AuthExpired, HttpFailed, HttpRetryable, QuotaDeferred, RateLimited, api_message, classify,
    retry_after_seconds,
)
from connectors.httpkit.paginate import PageRequest
from engine.core.secrets import Redactor, SecretStore

USER_AGENT = "ipai-data-connectors/0.1 (+https://github.com/ipai)"
MAX_REDIRECTS = 5
MAX_PAGE_BYTES = 64 * 1024 * 1024
"""A page larger than this fails the request (terminal, not retried) instead of filling the reader's memory:
RELIABILITY 15. APIs page far below it; one that does not is asked for smaller pages (the stream's page size)."""
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
"""Never sent past a redirect to another origin, whoever set them."""
RATE_LIMITED_RETRIES = 60
ADVICE = {
    401: "the credential was refused (for OAuth, a freshly exchanged token too); check it and store it again "
         "with `ipai secret set`",
    403: "the credential is not allowed to read this; check its scopes or permissions",
    404: "no such resource, or the credential cannot see it (some APIs answer 404 for private resources)",
}


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    url: str


class CredentialHandle:
    """The credential actor as a task sees it: a handle renewed once if the actor has gone away."""

    def __init__(self, start: Callable[[], Any]) -> None:
        self.start = start
        self.actor = start()

    async def call(self, method: str, *args: Any) -> Any:
        try:
            return await getattr(self.actor, method).remote(*args)
        except ray.exceptions.RayActorError:
            self.actor = self.start()  # ended while idle, or its node was lost: a new one takes over
            return await getattr(self.actor, method).remote(*args)
        except ray.exceptions.RayTaskError as exc:
            raise (exc.cause if isinstance(exc.cause, Exception) else exc) from None

    def tell(self, method: str, *args: Any) -> None:
        """Fire and forget (observations): a lost one costs nothing."""
        getattr(self.actor, method).remote(*args)


class Tokens:
    """The task's copy of the credential's access token, renewed through the credential actor."""

    def __init__(self, actor: CredentialHandle, store: SecretStore | None = None) -> None:
        self.actor, self.store = actor, store
        self.current: AccessToken | None = None

    async def get(self) -> str:
        if self.current is None or not self.current.fresh(time.time()):
            await self.refresh(self.current.value if self.current else None)
        assert self.current is not None
        return self.current.value

    async def refresh(self, stale: str | None) -> None:
        """Ask the actor for a token other than `stale`; concurrent askers share one exchange."""
        self.current = await self.actor.call("token", stale, self.store)  # through this run's claim


class Requester:
    """Sends page requests for one reader; shares the credential's budget and tokens through its actor.

    `scope` names the part of the API its requests draw on when the API keeps a quota for each part (GA4:
    a property); the budget then holds them only when that part's quota or the whole credential's is spent.
    `auth_headers` and `auth_params` name the entries of `headers` and `params` that carry credentials: they
    stay with the request's origin (see the module docstring).
    """

    def __init__(
        self, *, session: aiohttp.ClientSession, actor: CredentialHandle, tokens: Tokens | None, headers: dict[str, str],
        params: dict[str, str], rules: Sequence[ErrorRule], retry: RetryPolicy, rate_limit: RateLimit,
        egress: EgressPolicy, redact: Redactor, scope: str = "", auth_headers: Collection[str] = (),
        auth_params: Collection[str] = (),
    ) -> None:
        self.session, self.actor, self.tokens = session, actor, tokens
        self.headers, self.params, self.rules = headers, params, tuple(rules)
        self.retry, self.rate_limit, self.egress, self.redact = retry, rate_limit, egress, redact
        self.scope = scope
        self.auth_headers = CREDENTIAL_HEADERS | {h.lower() for h in auth_headers}
        self.auth_params = frozenset(auth_params)
        self.clear_until = 0.0
        self.asking = asyncio.Lock()

    async def send(self, request: PageRequest, *, extra_headers: dict[str, str] | None = None) -> Response:
        """Return the 2xx (or 304) response to `request`, retrying what the error table says to retry."""
        counts = {"errors": 0, "limited": 0, "auth": 0}

        def stop(state: RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, RateLimited):
                counts["limited"] += 1
                return counts["limited"] > RATE_LIMITED_RETRIES
            if isinstance(exc, AuthExpired):
                return False  # the second 401 becomes HttpFailed in _once
            counts["errors"] += 1
            return counts["errors"] >= self.retry.max_attempts

        retrying = AsyncRetrying(retry=retry_if_exception_type(HttpRetryable), stop=stop, wait=self._wait,
                                 reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._once(request, counts, extra_headers or {})
        except HttpRetryable as exc:
            # Retried here with backoff already: the read task must not be retried on top (no retry storm).
            tries = counts["errors"] + counts["limited"]
            raise HttpFailed(f"{exc} (gave up after {tries} attempts)") from None
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, (RateLimited, AuthExpired)):
            return 0.0  # the credential actor holds every caller until the limit resets
        if isinstance(exc, HttpRetryable) and exc.retry_after is not None:
            return min(exc.retry_after, self.retry.max_wait_s)
        n = state.attempt_number
        return random.uniform(0, min(self.retry.max_s, self.retry.initial_s * 2 ** (n - 1)))  # full jitter

    async def _once(self, request: PageRequest, counts: dict[str, int], extra: dict[str, str]) -> Response:
        await self._take_turn()
        headers = {"User-Agent": USER_AGENT, **self.headers, **extra}
        token = None
        if self.tokens is not None:
            token = await self.tokens.get()
            headers["Authorization"] = f"Bearer {token}"
        params = {**request.params, **self.params}
        response = await self._follow(request, headers, params)
        self._observe(response)
        if 200 <= response.status < 300 or response.status == 304:
            return response
        return await self._failure(request, response, counts, token)

    async def _take_turn(self) -> None:
        """Wait for this request's turn in the credential's budget (or park the run if the wait is too long)."""
        while time.time() >= self.clear_until:
            async with self.asking:  # one question at a time: a lease answers the requests queued behind it
                grant = None if time.time() < self.clear_until else await self.actor.call("acquire", self.scope)
            if grant is None:
                return
            if grant.deferred_until is not None:
                raise QuotaDeferred(f"{grant.reason}; the run is parked until then, with its state kept",
                                    until=grant.deferred_until)
            self.clear_until = grant.clear_until
            if grant.wait <= 0:
                return
            await asyncio.sleep(grant.wait)
            # A turn is reserved ahead of time: another task may have been told to back off (a 429's
            # Retry-After) while this one waited for it. Such a pause holds this request too: ask again.
            if not await self.actor.call("paused", self.scope):
                return

    async def _follow(self, request: PageRequest, headers: dict[str, str], params: dict[str, Any]) -> Response:
        url, method, body = request.url, request.method, request.body
        origin = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            try:
                self.egress.check_url(url)
            except EgressRefused as exc:
                raise HttpFailed(f"request to {self.redact(url)} refused: {exc}") from None
            try:
                async with self.session.request(
                    method, url, params={k: _text(v) for k, v in params.items()} or None, json=body,
                    headers=headers, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=self.retry.timeout_s),
                ) as resp:
                    data = await _read_capped(resp, self.redact(url))
                    out = Response(resp.status, {k.lower(): v for k, v in resp.headers.items()}, data, str(resp.url))
            except EgressRefused as exc:
                raise HttpFailed(f"request to {self.redact(url)} refused: {exc}") from None
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise HttpRetryable(f"{method} {self.redact(url)}: {type(exc).__name__} {self.redact(str(exc))}"
                                    .strip()) from None
            if out.status in (301, 302, 303, 307, 308) and "location" in out.headers:
                url, params = urljoin(out.url, out.headers["location"]), {}
                if out.status == 303:
                    method, body = "GET", None
                if _origin(url) != origin:
                    if body is not None:
                        raise HttpFailed(f"{method} {self.redact(out.url)} redirected to another origin "
                                         f"({self.redact(url.split('?')[0])}); its body is not sent there (it may "
                                         "carry credentials): point the spec at the address the API answers on")
                    headers = {k: v for k, v in headers.items() if k.lower() not in self.auth_headers}
                    url = _without_params(url, self.auth_params)
                continue
            return out
        raise HttpFailed(f"{self.redact(request.url)}: more than {MAX_REDIRECTS} redirects")

    def _reset_at(self, headers: dict[str, str]) -> float | None:
        """When the API says its rate-limit window resets (epoch seconds), if it says."""
        rl = self.rate_limit
        value = headers.get(rl.reset_header) if rl.reset_header else None
        try:
            return None if value is None else float(value) + (time.time() if rl.reset_kind == "delta_seconds" else 0.0)
        except ValueError:
            return None

    def _observe(self, response: Response) -> None:
        rl = self.rate_limit
        remaining = response.headers.get(rl.remaining_header) if rl.remaining_header else None
        reset_at = self._reset_at(response.headers)
        if remaining is None or not remaining.isdigit() or reset_at is None:
            return
        limit_text = response.headers.get("x-ratelimit-limit", "")
        limit = int(limit_text) if limit_text.isdigit() else None
        left = int(remaining)
        # The budget acts only near the end of a window: tell it then, not on every response.
        if limit is None or left < limit * 2 * SLOW_BELOW:
            self.actor.tell("observe", left, reset_at, limit)

    async def _failure(self, request: PageRequest, response: Response, counts: dict[str, int],
                       token: str | None) -> Response:
        text = response.body.decode("utf-8", errors="replace")
        rule = classify(self.rules, response.status, response.headers, text)
        action = rule.action if rule else ("retry" if response.status >= 500 else "fail")
        where = f"{request.method} {self.redact(response.url)}"
        said = self.redact(api_message(text))
        if action == "ignore":
            return Response(response.status, response.headers, b"", response.url)
        if action == "retry":
            raise HttpRetryable(f"{where} answered {response.status}: {said}",
                                retry_after=retry_after_seconds(response.headers))
        if action == "refresh_auth" and self.tokens is not None and token is not None and counts["auth"] == 0:
            counts["auth"] += 1
            await self.tokens.refresh(token)
            raise AuthExpired(f"{where} answered {response.status}: {said}")
        if action == "rate_limited":
            seconds = self._limit_wait(response, counts, rule)
            if seconds > self.retry.max_wait_s:
                raise QuotaDeferred(f"{where} answered {response.status} ({said}); the limit resets in "
                                    f"{seconds:.0f} s, so the run is parked with its state kept",
                                    until=time.time() + seconds)
            await self.actor.call("pause", seconds, f"{where} answered {response.status}")
            self.clear_until = 0.0  # ask the budget before the next try: it now holds this credential
            raise RateLimited(f"{where} answered {response.status}: {said}", retry_after=seconds)
        if action == "deferred":
            seconds = self._limit_wait(response, counts, rule)
            raise QuotaDeferred(f"{where} answered {response.status}: {said}", until=time.time() + seconds)
        advice = (rule.message if rule and rule.message else ADVICE.get(response.status, ""))
        raise HttpFailed(f"{where} answered {response.status}: {said}" + (f"; {advice}" if advice else ""),
                         status=response.status)

    def _limit_wait(self, response: Response, counts: dict[str, int], rule: ErrorRule | None) -> float:
        """Seconds to hold this credential: Retry-After, else the quota reset, else what the rule says, else
        at least a minute, doubling."""
        after = retry_after_seconds(response.headers)
        if after is not None:
            return after
        if rule is not None and rule.reset_every is not None:
            return seconds_to_reset(rule.reset_every, rule.reset_timezone, time.time())
        if rule is not None and rule.wait_s is not None:
            return rule.wait_s
        rl = self.rate_limit
        reset_at = self._reset_at(response.headers)
        if rl.remaining_header and response.headers.get(rl.remaining_header) == "0" and reset_at is not None:
            return max(1.0, reset_at - time.time())
        # GitHub's secondary limits without a header: wait at least a minute, backing off (github.md s.7).
        return 60.0 * 2 ** min(counts["limited"], 4)


def seconds_to_reset(every: str, tz: str, now: float) -> float:
    """Seconds from `now` to the next full hour, or the next midnight in time zone `tz`."""
    moment = datetime.fromtimestamp(now, ZoneInfo(tz))
    if every == "hour":
        boundary = moment.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    else:
        boundary = datetime.combine(moment.date() + timedelta(days=1), datetime.min.time(), ZoneInfo(tz))
    return max(1.0, boundary.timestamp() - now)


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of `url`: credentials are sent only where these stay the same."""
    parts = urlsplit(url)
    port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def _without_params(url: str, names: frozenset[str]) -> str:
    """`url` without the query parameters in `names` (an API key a server echoed into its redirect)."""
    parts = urlsplit(url)
    if not names or not parts.query:
        return url
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in names]
    return urlunsplit(parts._replace(query=urlencode(kept)))


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


async def _read_capped(resp: aiohttp.ClientResponse, shown: str) -> bytes:
    """The response body, refused past MAX_PAGE_BYTES as soon as it is known to be larger (by Content-Length,
    else while reading), so a 200 MB page never sits in memory whole."""
    limit = MAX_PAGE_BYTES
    too_big = (f"the response of {shown} is larger than {limit // (1024 * 1024)} MiB, more than one page should "
               "be: ask the API for fewer records per page (the stream's page size)")
    if resp.content_length is not None and resp.content_length > limit:
        raise HttpFailed(f"{too_big} (Content-Length {resp.content_length:,} bytes)")
    chunks, size = [], 0
    async for chunk in resp.content.iter_chunked(1024 * 1024):
        size += len(chunk)
        if size > limit:
            raise HttpFailed(too_big)
        chunks.append(chunk)
    return b"".join(chunks)
