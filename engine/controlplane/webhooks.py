"""Webhooks (FR-039): when a run ends, POST a signed JSON summary of it to each URL of the spec's `webhooks`.

    run start  prepare(): every URL checked against the egress policy and every signing secret read from
               the Vault (the worker may read secrets only while its run is running); a missing secret
               fails the run before any source request, naming it
    run end    announce(): the final run row -> per URL, in parallel: JSON body -> HMAC-SHA256 -> POST,
               retried (tenacity) -> one `webhook_deliveries` row per attempt -> one run log record,
               `webhook.delivered` or `webhook.failed` (`ipai logs RUN`). Each attempt resolves the host once
               and connects to an address the egress policy checked, the name kept for TLS and `Host`
               (connectors/httpkit/egress.py `CheckedTransport`), so a name cannot be rebound in between

What a receiver gets, as `Content-Type: application/json`:

    X-IPAI-Event: run.succeeded         or run.failed, run.deferred, run.cancelled
    X-IPAI-Delivery: <uuid>             the same on every attempt of one delivery: dedupe on it
    X-IPAI-Timestamp: <unix seconds>    when this attempt was sent (`sent_at` in the body, which is signed)
    X-IPAI-Signature: sha256=<hex>      HMAC-SHA256 of the raw body bytes, keyed by the signing secret

    {"version": 1, "event": "run.succeeded", "delivery_id": "...", "sent_at": "...Z",
     "run": {"id", "status", "trigger", "full_refresh", "started_at", "ended_at", "duration_s", "rows",
             "rows_by_stream", "metrics", "error", "deferred_until"},
     "instance": {"id", "name", "env", "source_type"}}

Connection errors, timeouts, 5xx, 408 and 429 are tried again (a Retry-After is honoured up to
RETRY_AFTER_CAP_S) with exponential backoff, at most ATTEMPTS times and never past BUDGET_S for one URL;
any other answer ends the delivery (redirects are not followed: a 3xx is a wrong URL). A webhook never
changes its run's status, and its signing key reaches no log, error, payload or table.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
from psycopg.rows import dict_row
from pydantic import BaseModel
from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_attempt, stop_before_delay

from connectors.httpkit.egress import CheckedTransport, EgressPolicy, EgressRefused
from engine.controlplane import records
from engine.core.errors import ConfigError
from engine.core.secrets import SecretStore
from engine.core.secrets import resolve as resolve_secrets
from engine.core.spec import ConnectorSpec, Webhook

PAYLOAD_VERSION = 1
ATTEMPTS = 5
BUDGET_S = 30.0
"""Longest one URL may hold the run's process, waits and requests together."""
REQUEST_TIMEOUT_S = 10.0
MIN_REQUEST_S = 1.0
"""No attempt starts with less than this left of the budget."""
BACKOFF_S = 1.0
BACKOFF_MAX_S = 8.0
RETRY_AFTER_CAP_S = 10.0
RETRY_STATUSES = frozenset({408, 429})
ERROR_CHARS = 300
USER_AGENT = "ipai-data-connectors-webhooks/1"


@dataclass(frozen=True)
class Target:
    """A webhook ready to fire: its spec entry and the signing key read at run start."""

    webhook: Webhook
    key: str = field(repr=False)

    @property
    def url(self) -> str:
        """The URL as logs and `webhook_deliveries` show it (no user info, query or fragment)."""
        return display_url(self.webhook.url)


@dataclass(frozen=True)
class Attempt:
    """One POST: the HTTP status it got, or why it got none."""

    number: int
    status: int | None
    error: str | None
    seconds: float
    retry: bool
    """Worth trying again (a connection error, a timeout, 5xx, 408, 429)."""
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(frozen=True)
class Delivery:
    """The outcome of one webhook for one run: every attempt, in order."""

    target: Target
    event: str
    delivery_id: str
    attempts: tuple[Attempt, ...]

    @property
    def delivered(self) -> bool:
        return bool(self.attempts) and self.attempts[-1].delivered


class _Webhooks(BaseModel):
    """The spec's webhooks alone, so their secrets resolve (and a missing one is named) by spec path."""

    webhooks: tuple[Webhook, ...]


def prepare(spec: ConnectorSpec, store: SecretStore, *, egress: EgressPolicy | None = None) -> tuple[Target, ...]:
    """Check each webhook URL and read its signing secret; raise ConfigError naming the field and what to do."""
    egress = egress or EgressPolicy.from_environment()
    for i, hook in enumerate(spec.webhooks):
        try:
            egress.check_url(hook.url)
        except EgressRefused as exc:
            raise ConfigError(f"webhooks[{i}].url: {exc}") from None
    keys = resolve_secrets(_Webhooks(webhooks=spec.webhooks), store)
    return tuple(Target(hook, keys[hook.signing_secret.secret]) for hook in spec.webhooks)


def sign(body: bytes, key: str) -> str:
    """Return the `X-IPAI-Signature` of `body`: `sha256=` and the hex HMAC-SHA256 keyed by `key`."""
    return "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def payload(run: Mapping[str, Any], spec: ConnectorSpec) -> dict[str, Any]:
    """Return the body's fields that every attempt shares, from the run's final row."""
    started, ended = run["started_at"], run["ended_at"]
    return {
        "version": PAYLOAD_VERSION,
        "event": f"run.{run['status']}",
        "run": {
            "id": str(run["id"]), "status": run["status"], "trigger": run["trigger"],
            "full_refresh": run["full_refresh"], "started_at": _iso(started), "ended_at": _iso(ended),
            "duration_s": round((ended - started).total_seconds(), 3) if started and ended else None,
            "rows": run["rows_processed"], "rows_by_stream": run["rows_by_stream"], "metrics": run["metrics"],
            "error": run["error"], "deferred_until": _iso(run["deferred_until"]),
        },
        "instance": {"id": str(run["instance_id"]), "name": spec.name, "env": spec.env,
                     "source_type": spec.source_type},
    }


def announce(
    conn: psycopg.Connection[Any], targets: tuple[Target, ...], *, spec: ConnectorSpec, run_id: str,
    redact: Callable[[str], str], transport: httpx.BaseTransport | None = None,
    egress: EgressPolicy | None = None, sleep: Callable[[float], None] = time.sleep,
) -> list[Delivery]:
    """Deliver the ended run to every target whose events include its status, recording each attempt and
    logging each outcome on the run. Never raises: a webhook's trouble is its own, not the run's.

    `transport` and `sleep` are seams for tests (an `httpx.MockTransport`, which sees the checked address in
    the URL; a recorder of backoff waits)."""
    try:
        with conn.cursor(row_factory=dict_row) as cur:
            run = cur.execute("select * from connector_runs where id = %s", (run_id,)).fetchone()
        if run is None or not (chosen := [t for t in targets if run["status"] in t.webhook.events]):
            return []
        base = payload(run, spec)
        sender = _Sender(conn, run, base, redact, transport, egress or EgressPolicy.from_environment(), sleep)
        # psycopg connections serialise their use across threads, so the deliveries share the run's.
        with ThreadPoolExecutor(max_workers=len(chosen), thread_name_prefix=f"webhook {run_id[:8]}") as pool:
            return list(pool.map(sender.deliver, chosen))
    except Exception as exc:  # noqa: BLE001 - reported on the run; the run's own status stands
        _log(conn, run_id, "warning", "webhook.failed", f"webhooks not sent: {redact(f'{type(exc).__name__}: {exc}')}")
        return []


@dataclass(frozen=True)
class _Sender:
    """Delivers one run's end to one target at a time (one instance shared by the delivering threads)."""

    conn: psycopg.Connection[Any]
    run: Mapping[str, Any]
    base: dict[str, Any]
    redact: Callable[[str], str]
    transport: httpx.BaseTransport | None
    egress: EgressPolicy
    sleep: Callable[[float], None]

    def deliver(self, target: Target) -> Delivery:
        delivery_id = str(uuid.uuid4())
        attempts: list[Attempt] = []
        started = time.monotonic()
        # Every attempt resolves the name once and connects to an address the policy checked (DNS rebinding:
        # a second lookup by the HTTP client could answer otherwise), with the name kept for TLS and `Host`.
        with httpx.Client(transport=CheckedTransport(self.egress, inner=self.transport), follow_redirects=False,
                          headers={"User-Agent": USER_AGENT}) as client:

            def attempt() -> Attempt:
                left = BUDGET_S - (time.monotonic() - started)
                done = self._post(client, target, delivery_id, len(attempts) + 1,
                                  timeout=max(MIN_REQUEST_S, min(REQUEST_TIMEOUT_S, left)))
                attempts.append(done)
                self._record(target, delivery_id, done)
                return done

            Retrying(
                stop=stop_after_attempt(ATTEMPTS) | stop_before_delay(BUDGET_S - MIN_REQUEST_S),
                wait=_wait, retry=retry_if_result(lambda a: a.retry), sleep=self.sleep,
                retry_error_callback=lambda state: None,  # out of attempts or time: the last one says why
            )(attempt)
        delivery = Delivery(target, self.base["event"], delivery_id, tuple(attempts))
        self._report(delivery)
        return delivery

    def _post(self, client: httpx.Client, target: Target, delivery_id: str, number: int, *,
              timeout: float) -> Attempt:
        sent = datetime.now(timezone.utc)
        body = json.dumps({**self.base, "delivery_id": delivery_id, "sent_at": _iso(sent)},
                          separators=(",", ":"), default=str).encode()
        headers = {"Content-Type": "application/json", "X-IPAI-Event": self.base["event"],
                   "X-IPAI-Delivery": delivery_id, "X-IPAI-Timestamp": str(int(sent.timestamp())),
                   "X-IPAI-Signature": sign(body, target.key)}
        t0 = time.monotonic()

        def took() -> float:
            return time.monotonic() - t0

        try:
            with client.stream("POST", target.webhook.url, content=body, headers=headers,
                               timeout=timeout) as response:
                status, retry_after = response.status_code, _retry_after(response.headers.get("Retry-After"))
                said = b"" if 200 <= status < 300 else _head(response)
        except EgressRefused as exc:
            return Attempt(number, None, self._said(f"refused: {exc}"), took(), retry=False)
        except httpx.TimeoutException:
            return Attempt(number, None, f"no answer within {timeout:.0f} s", took(), retry=True)
        except (httpx.TransportError, OSError) as exc:  # a name that does not resolve is a ConnectError
            return Attempt(number, None, self._said(f"{type(exc).__name__}: {exc}"), took(), retry=True)
        except Exception as exc:  # noqa: BLE001 - anything else is not worth a retry, but is worth recording
            return Attempt(number, None, self._said(f"{type(exc).__name__}: {exc}"), took(), retry=False)
        if 200 <= status < 300:
            return Attempt(number, status, None, took(), retry=False)
        text = " ".join(said.decode("utf-8", "replace").split())
        return Attempt(number, status, self._said(f"HTTP {status}" + (f": {text}" if text else "")), took(),
                       retry=status >= 500 or status in RETRY_STATUSES, retry_after=retry_after)

    def _said(self, text: str) -> str:
        text = self.redact(text)
        return text if len(text) <= ERROR_CHARS else text[:ERROR_CHARS - 3] + "..."

    def _record(self, target: Target, delivery_id: str, attempt: Attempt) -> None:
        try:
            self.conn.execute(
                "insert into webhook_deliveries (run_id, instance_id, delivery_id, url, event, attempt, delivered,"
                " http_status, error, duration_ms) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (self.run["id"], self.run["instance_id"], delivery_id, target.url, self.base["event"],
                 attempt.number, attempt.delivered, attempt.status, attempt.error, round(attempt.seconds * 1000)))
        except psycopg.Error:
            pass  # the control plane is unreachable: the receiver still hears of the run

    def _report(self, delivery: Delivery) -> None:
        target, attempts = delivery.target, delivery.attempts
        last = attempts[-1]
        fields = {"url": target.url, "run_event": delivery.event, "delivery_id": delivery.delivery_id,
                  "attempts": len(attempts), "http_status": last.status}
        tries = f"{len(attempts)} attempt{'s' if len(attempts) > 1 else ''}"
        if delivery.delivered:
            _log(self.conn, str(self.run["id"]), "info", "webhook.delivered",
                 f"webhook {target.url}: {delivery.event} delivered (HTTP {last.status}, {tries})", **fields)
        else:
            _log(self.conn, str(self.run["id"]), "warning", "webhook.failed",
                 f"webhook {target.url}: {delivery.event} not delivered after {tries}: {last.error}; the run's "
                 "status is unchanged, and each attempt is in webhook_deliveries", **fields)


def display_url(url: str) -> str:
    """Return `url` without user info, query string or fragment (which may carry tokens)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _head(response: httpx.Response) -> bytes:
    """The start of an error answer's body, for the record; never the whole of a large one."""
    head = b""
    for chunk in response.iter_bytes():
        head += chunk
        if len(head) >= ERROR_CHARS:
            break
    return head[:ERROR_CHARS]


def _wait(state: RetryCallState) -> float:
    """Exponential backoff (1, 2, 4, 8 s), or the receiver's Retry-After when longer, up to a cap."""
    backoff = min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (state.attempt_number - 1))
    outcome = state.outcome
    last = outcome.result() if outcome is not None and not outcome.failed else None
    if isinstance(last, Attempt) and last.retry_after is not None:
        return max(backoff, min(last.retry_after, RETRY_AFTER_CAP_S))
    return backoff


def _retry_after(value: str | None) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _log(conn: psycopg.Connection[Any], run_id: str, level: str, event: str, message: str, **fields: Any) -> None:
    try:
        records.log(conn, run_id, level, event, message, **fields)
    except psycopg.Error:
        pass  # the control plane is unreachable; the attempts it could take are recorded already
