"""The request budget of one credential: a token bucket from the spec, slowed by what the API reports.

One `Budget` lives in the credential's actor (see `credential.py`), so every task of every run that
uses the credential draws from it. `acquire` answers how long the caller must wait before sending;
`observe` feeds back the API's rate-limit headers (`x-ratelimit-remaining/reset`, GA4's
`propertyQuota`); `pause` holds every caller until a `Retry-After` or reset passes. A wait longer
than `max_wait_s` is not served in place: `acquire` returns the time the quota resets, and the
caller parks the run as `deferred` with its state kept.

A quota the API keeps for one part of what the credential reaches (GA4 keeps one per property) is
observed and acquired under a `scope` naming that part: when it is spent, only requests in that scope
are held. The empty scope is the whole credential, and holding it holds every scope.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SLOW_BELOW = 0.1
"""When less than this share of a window's requests remain, spread the rest evenly until the reset."""
CLEAR_S = 0.2
"""How long a caller may send without asking while nothing limits the credential (a pause set meanwhile
by another task reaches it this much later at most: about what is already in flight anyway)."""


@dataclass(frozen=True)
class Grant:
    """The budget's answer to one request."""

    wait: float
    deferred_until: float | None = None
    reason: str = ""
    clear_until: float = 0.0
    """Until then the caller may send further requests without asking (nothing limits the credential)."""


@dataclass
class Budget:
    """GCRA token bucket (rate `rate`, burst `burst`) plus pauses; times are epoch seconds."""

    rate: float | None
    burst: int = 10
    max_wait_s: float = 900.0
    reserve: int = 0
    _tat: float = 0.0  # theoretical arrival time of the next request at the configured rate
    _pauses: dict[str, tuple[float, str]] = field(default_factory=dict)  # scope -> (until, reason)
    _windows: dict[tuple[str, str], _Window] = field(default_factory=dict)  # (scope, window) -> window
    granted: int = 0
    waits: list[float] = field(default_factory=list)

    def acquire(self, now: float, scope: str = "") -> Grant:
        """Reserve one request in `scope`: how long to wait first, or until when the run must be parked."""
        paused_until, reason = max(self._pauses.get("", (0.0, "")), self._pauses.get(scope, (0.0, "")))
        if paused_until - now > self.max_wait_s:
            return Grant(0.0, paused_until, reason)
        rate = self._effective_rate(now, scope)
        if rate is None and paused_until <= now:
            # Nothing limits this credential now: the caller may send without asking for a short while,
            # and learns of a pause set by another task within that while.
            self.granted += 1
            return Grant(0.0, clear_until=now + CLEAR_S)
        start = max(now, paused_until)
        if rate is not None:
            interval = 1.0 / rate
            tolerance = (self.burst - 1) * interval
            tat = max(self._tat, start)
            start = max(start, tat - tolerance)
            self._tat = tat + interval
        self.granted += 1
        wait = max(0.0, start - now)
        if wait > 0:
            self.waits.append(wait)
        return Grant(wait)

    def paused(self, now: float, scope: str = "") -> bool:
        """Whether a pause holds `scope` now (a caller that waited its turn checks for one set meanwhile)."""
        until = max(self._pauses.get("", (0.0, ""))[0], self._pauses.get(scope, (0.0, ""))[0])
        return until > now

    def _effective_rate(self, now: float, scope: str) -> float | None:
        rates = [w.rate for (s, _), w in self._windows.items()
                 if s in ("", scope) and w.rate is not None and now < w.reset_at]
        if self.rate is not None:
            rates.append(self.rate)
        return min(rates) if rates else None

    def pause(self, until: float, reason: str, scope: str = "") -> None:
        """Hold every caller in `scope` (by default: every caller) until `until` (a Retry-After or a quota reset)."""
        if until > self._pauses.get(scope, (0.0, ""))[0]:
            self._pauses[scope] = (until, reason)

    def observe(self, *, remaining: int, reset_at: float, now: float, limit: int | None = None,
                window: str = "requests", scope: str = "") -> None:
        """Take in the API's own count of what is left of a quota `window` of `scope` until `reset_at`.

        Several windows may be tracked at once (GA4 reports tokens per hour and per day); the slowest of
        the request's scope and the credential's wins.
        """
        w = self._windows.setdefault((scope, window), _Window())
        # Without a stated size, the most ever seen left stands for it (as Airbyte does for GA4).
        w.limit = limit if limit is not None else max(w.limit or 0, remaining)
        if reset_at > w.reset_at:
            w.rate = None  # a new window began
        w.reset_at = reset_at
        usable = remaining - self.reserve
        if usable <= 0:
            of = f" for {scope}" if scope else ""
            self.pause(reset_at + 1.0, f"the API reports its {window} quota{of} spent until {_hhmm(reset_at)}",
                       scope)
            return
        if w.limit and remaining / w.limit < SLOW_BELOW:
            w.rate = usable / max(1.0, reset_at - now)


@dataclass
class _Window:
    """One quota the API reports on: its size, when it resets, and the pace that makes it last."""

    limit: int | None = None
    reset_at: float = 0.0
    rate: float | None = None


def _hhmm(epoch: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
