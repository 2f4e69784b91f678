"""The error table: what each HTTP response means for the reader, and the errors a reader raises.

    IpaiError
    ├── HttpFailed            terminal (400/403/404 ..., bad JSON, a selector that does not match):
    │                         the partition fails at once with endpoint, status and the API's message
    ├── TransientError
    │   └── HttpRetryable     5xx, timeouts, connection resets: retried with backoff in the task
    │       ├── RateLimited   429 / secondary limits / exhausted quota: wait for Retry-After or reset
    │       └── AuthExpired   401: refresh the access token once, then fail
    └── QuotaDeferred         a daily quota is spent: the run parks as `deferred` until the reset

Rules are tried in order: the stream's own (`errors:` in the spec), the connector's, then DEFAULT_RULES.
The whole error tree, these included, is drawn in engine/core/errors.py.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping, Sequence

from connectors.httpkit.components import ErrorRule
from engine.core.errors import IpaiError, SourceDeferred, TransientError, _rebuild

DEFAULT_RULES: tuple[ErrorRule, ...] = (
    ErrorRule(status=(401,), action="refresh_auth"),
    # Exhausted primary limits say so in a header, whatever the status (GitHub sends 403 or 429).
    ErrorRule(status=(403, 429), header_equals=("x-ratelimit-remaining", "0"), action="rate_limited"),
    ErrorRule(status=(403, 429), body_contains="rate limit", action="rate_limited"),
    ErrorRule(status=(429,), action="rate_limited"),
    ErrorRule(status=(408, 425, 500, 502, 503, 504), action="retry"),
    ErrorRule(status=(400, 403, 404, 405, 409, 410, 411, 413, 414, 422), action="fail"),
)


class HttpFailed(IpaiError):
    """A response that retrying will not fix; the message names the endpoint, the status and the API's words."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), str(self), {"status": self.status}))


class HttpRetryable(TransientError):
    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), str(self), {"retry_after": self.retry_after}))


class RateLimited(HttpRetryable):
    """The API asked us to slow down; `retry_after` seconds (None: back off exponentially)."""


class AuthExpired(HttpRetryable):
    """The access token was refused; the requester refreshes it once before giving up."""


class QuotaDeferred(SourceDeferred):
    """A quota that resets much later is spent; the run stops as `deferred` and resumes after `until`."""


def classify(rules: Sequence[ErrorRule], status: int, headers: Mapping[str, str], body: str) -> ErrorRule | None:
    """Return the first rule matching a non-2xx response, or None (then: 5xx retry, others fail)."""
    lowered = body.lower()
    for rule in rules:
        if rule.status and status not in rule.status:
            continue
        if rule.body_contains is not None and rule.body_contains.lower() not in lowered:
            continue
        if rule.header_equals is not None:
            name, value = rule.header_equals
            if headers.get(name) != value:
                continue
        return rule
    return None


def retry_after_seconds(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Return the wait a `Retry-After` header asks for, in seconds (delta-seconds or HTTP-date form)."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def api_message(body: str, limit: int = 300) -> str:
    """Return the API's own error text: `message`, `error.message` or `error_description`, else a snippet."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        for candidate in (data.get("message"), err.get("message") if isinstance(err, dict) else None,
                          data.get("error_description"), err if isinstance(err, str) else None):
            if isinstance(candidate, str) and candidate:
                return candidate[:limit]
    snippet = " ".join(body.split())
    return snippet[:limit] + ("..." if len(snippet) > limit else "") if snippet else "(empty body)"
