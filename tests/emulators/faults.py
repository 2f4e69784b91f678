"""The faults an emulator can inject, set at run time through `POST /_emulator/faults`.

Every fault is off until set. A POST merges its keys into the current settings: a key replaces that fault
wholesale (and restarts its "every k-th request" counter), `null` switches it off, keys not named stay as
they are. Unknown keys and malformed values are refused, so a typo in a test fails loudly.

Base faults (an emulator module may register more with `Faults(extra={...})`):

    latency_ms          sleep this long before answering each API request
    token_latency_ms    sleep this long inside the OAuth token endpoint (makes overlapping refreshes visible)
    inflight_grace_ms   after a 429/403 is issued, requests from that credential arriving within this many
                        ms were plausibly already in flight: they are refused but not counted as violations
                        (default 250)
    storm               {"every": k, "status": 429|403, "retry_after": <int s> | "http-date" | null,
                         "seconds": s, "count": n} - secondary-rate-limit errors on every k-th request
                        (counting authenticated, quota-counted requests not already refused); the
                        credential must wait `retry_after` seconds, or `seconds` (default 1 for
                        "http-date", 60 when no header is sent)
    errors_5xx          {"every": k, "status": 502, "count": n}
    truncate            {"every": k, "count": n} - every k-th 200 answer carries half its JSON body
    primary_limit       {"limit": N, "window_s": S, "status": 403|429} - enforced per-credential quota
    token_ttl_s         lifetime of access tokens the OAuth endpoint issues from now on
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DEFAULT_INFLIGHT_GRACE_MS = 250.0


@dataclass
class Every:
    """Fire on every `every`-th call to `due()`, at most `count` times (no limit when `count` is None)."""

    every: int
    count: int | None = None
    seen: int = 0
    fired: int = 0

    def due(self) -> bool:
        if self.count is not None and self.fired >= self.count:
            return False
        self.seen += 1
        if self.seen % self.every:
            return False
        self.fired += 1
        return True


@dataclass
class Storm:
    """Secondary-rate-limit errors: which status, and how long the credential is told to wait."""

    every: Every
    status: int
    retry_after: int | str | None
    seconds: float


@dataclass
class StatusEvery:
    every: Every
    status: int


@dataclass
class PrimaryLimit:
    limit: int
    window_s: float
    status: int = 403


def _number(value: Any, name: str, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ValueError(f"{name} must be a number >= {minimum}, got {value!r}")
    return float(value)


def _integer(value: Any, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _object(value: Any, name: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be an object, got {value!r}")
    unknown = set(value) - allowed
    if unknown:
        raise ValueError(f"{name} has unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    return value


def parse_every(value: Any, name: str, *, extra: frozenset[str] = frozenset()) -> Every:
    """Read the `{"every": k, "count": n}` part shared by every counted fault."""
    spec = _object(value, name, {"every", "count"} | extra)
    count = spec.get("count")
    return Every(_integer(spec.get("every"), f"{name}.every"),
                 None if count is None else _integer(count, f"{name}.count", minimum=0))


def _status(value: Any, name: str, allowed: range | tuple[int, ...]) -> int:
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed) if isinstance(allowed, tuple) else 'a 5xx'}")
    return int(value)


def _storm(value: Any, name: str) -> Storm:
    every = parse_every(value, name, extra=frozenset({"status", "retry_after", "seconds"}))
    status = _status(value.get("status", 429), f"{name}.status", (429, 403))
    retry_after = value.get("retry_after")
    if retry_after == "http-date":
        seconds = _number(value.get("seconds", 1), f"{name}.seconds")
    elif retry_after is None:
        seconds = _number(value.get("seconds", 60), f"{name}.seconds")
    else:
        retry_after = _integer(retry_after, f"{name}.retry_after", minimum=0)
        seconds = float(retry_after)
    return Storm(every, status, retry_after, seconds)


def _errors_5xx(value: Any, name: str) -> StatusEvery:
    every = parse_every(value, name, extra=frozenset({"status"}))
    return StatusEvery(every, _status(value.get("status", 502), f"{name}.status", range(500, 600)))


def _truncate(value: Any, name: str) -> Every:
    return parse_every(value, name)


def _primary_limit(value: Any, name: str) -> PrimaryLimit:
    spec = _object(value, name, {"limit", "window_s", "status"})
    return PrimaryLimit(_integer(spec.get("limit"), f"{name}.limit"),
                        _number(spec.get("window_s", 3600), f"{name}.window_s", minimum=0.001),
                        _status(spec.get("status", 403), f"{name}.status", (403, 429)))


Parser = Callable[[Any, str], Any]

BASE_PARSERS: dict[str, Parser] = {
    "latency_ms": _number,
    "token_latency_ms": _number,
    "inflight_grace_ms": _number,
    "storm": _storm,
    "errors_5xx": _errors_5xx,
    "truncate": _truncate,
    "primary_limit": _primary_limit,
    "token_ttl_s": lambda v, n: _number(v, n, minimum=0.001),
}


class Faults:
    """Current fault settings: the JSON a test sent, and the parsed, counting form the emulator uses."""

    def __init__(self, *, extra: dict[str, Parser] | None = None) -> None:
        self._parsers = {**BASE_PARSERS, **(extra or {})}
        self._raw: dict[str, Any] = {}
        self._parsed: dict[str, Any] = {}

    def update(self, changes: Any) -> None:
        """Merge `changes` into the settings; raise ValueError (changing nothing) if any key is invalid."""
        if not isinstance(changes, dict):
            raise ValueError("the faults body must be a JSON object")
        parsers = self._parsers
        unknown = set(changes) - set(parsers)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {sorted(parsers)}")
        parsed = {k: None if v is None else parsers[k](v, k) for k, v in changes.items()}
        for key, value in parsed.items():
            if value is None:
                self._raw.pop(key, None)
                self._parsed.pop(key, None)
            else:
                self._raw[key] = changes[key]
                self._parsed[key] = value

    def reset(self) -> None:
        self._raw.clear()
        self._parsed.clear()

    def get(self, key: str) -> Any:
        """The parsed setting for `key`, or None when that fault is off."""
        return self._parsed.get(key)

    def settings(self) -> dict[str, Any]:
        return dict(self._raw)

    def grace_s(self) -> float:
        grace = self._parsed.get("inflight_grace_ms")
        return (DEFAULT_INFLIGHT_GRACE_MS if grace is None else grace) / 1000.0
