"""Record what an emulator was asked and what it answered, so a test can audit a connector's behaviour.

Entries are kept as tuples (cheap at thousands of requests a second) and turned into dicts only when the
admin API reads them. The log keeps the newest `limit` entries; the counters behind `stats()` cover every
request since the last `clear()`, whatever the log dropped.
"""

from __future__ import annotations

import hashlib
import json
import itertools
from collections import Counter, deque
from typing import Any
from urllib.parse import parse_qsl

FIELDS = ("i", "t", "method", "path", "query", "status", "credential", "bytes", "violation", "note", "body")
BODY_LIMIT = 8192
"""Request bodies up to this size are kept (JSON parsed when read): what a POST API such as GA4 was asked."""


def credential_id(token: str | None) -> str | None:
    """Name a token in the log by a short, stable hash prefix, never by the token itself."""
    if token is None:
        return None
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def _json_or_text(body: bytes | None) -> Any:
    if body is None:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", errors="replace")


class RequestLog:
    """An append-only, bounded log of requests plus counters over everything since the last clear."""

    def __init__(self, *, limit: int = 200_000) -> None:
        self._entries: deque[tuple] = deque(maxlen=limit)
        self._next = 0
        self._by_status: Counter[int] = Counter()
        self._by_note: Counter[str] = Counter()
        self._violations = 0
        self._token_requests = 0
        self._tokens_in_flight = 0
        self._max_tokens_in_flight = 0
        self._in_flight = 0
        self._max_in_flight = 0

    def record(self, t: float, method: str, path: str, query: str, *, status: int, credential: str | None,
               size: int, violation: bool, note: str | None, body: bytes = b"") -> None:
        """Log one answered request; `query` is the raw query string and `body` the raw request body (parsed
        only when read; kept up to BODY_LIMIT bytes)."""
        kept = body if 0 < len(body) <= BODY_LIMIT else None
        self._entries.append((self._next, t, method, path, query, status, credential, size, violation, note, kept))
        self._next += 1
        self._by_status[status] += 1
        if note:
            self._by_note[note] += 1
        if violation:
            self._violations += 1

    def entries(self, since: int = 0) -> list[dict[str, Any]]:
        """Entries with sequence number `i >= since` that the log still holds, oldest first."""
        if not self._entries:
            return []
        skip = max(0, since - self._entries[0][0])
        rows = [dict(zip(FIELDS, row)) for row in itertools.islice(self._entries, skip, None)]
        for row in rows:
            row["query"] = dict(parse_qsl(row["query"], keep_blank_values=True))
            row["body"] = _json_or_text(row["body"])
        return rows

    def clear(self) -> None:
        """Forget every entry and reset the counters; sequence numbers keep increasing."""
        self._entries.clear()
        self._by_status.clear()
        self._by_note.clear()
        self._violations = 0
        self._token_requests = 0
        self._max_tokens_in_flight = self._tokens_in_flight
        self._max_in_flight = self._in_flight

    def request_started(self) -> None:
        self._in_flight += 1
        self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def request_finished(self) -> None:
        self._in_flight -= 1

    def token_request_started(self) -> None:
        self._token_requests += 1
        self._tokens_in_flight += 1
        self._max_tokens_in_flight = max(self._max_tokens_in_flight, self._tokens_in_flight)

    def token_request_finished(self) -> None:
        self._tokens_in_flight -= 1

    def stats(self) -> dict[str, Any]:
        return {
            "requests": sum(self._by_status.values()),
            "by_status": {str(k): v for k, v in sorted(self._by_status.items())},
            "by_note": dict(sorted(self._by_note.items())),
            "violations": self._violations,
            "max_concurrent_requests": self._max_in_flight,
            "token_requests": self._token_requests,
            "max_concurrent_token_requests": self._max_tokens_in_flight,
            "next_i": self._next,
        }
