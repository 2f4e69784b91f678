"""GA4 property quotas (../shared/api-contracts/ga4.md section 7): token pools per property, and refusals.

Every property has six pools, reported in `propertyQuota` as {"consumed": <this request>, "remaining": n}:

    tokensPerDay, tokensPerHour,          `cost` tokens per answered report (default 1 + rows returned //
    tokensPerProjectPerHour               10,000); the emulator is one project, so the project pool counts
                                          the same tokens as the hourly pool, against its lower limit
    concurrentRequests                    requests to the property in flight when one arrives (latency
                                          faults included; consumed is always 0)
    serverErrorsPerProjectPerHour         5xx answers for the property this hour (faults included)
    potentiallyThresholdedRequestsPerHour reports that asked for a demographic dimension

When a pool is spent, every request to the property (metadata too) is refused with 429 RESOURCE_EXHAUSTED
until the pool resets; the thresholded pool refuses only requests that would be thresholded. Daily pools
reset at midnight America/Los_Angeles, hourly ones at the top of the hour, unless the fault gives periods.

Fault `ga4_quota` (POST /_emulator/faults) replaces the defaults (a standard property's) wholesale and
restarts every pool; keys not given keep their defaults:

    {"tokens_per_day": 200000, "tokens_per_hour": 40000, "tokens_per_project_per_hour": 14000,
     "concurrent_requests": 10, "server_errors_per_hour": 10, "thresholded_requests_per_hour": 120,
     "cost_per_request": k, "day_reset_s": S, "hour_reset_s": S}

`day_reset_s` / `hour_reset_s` make the pools reset every S seconds counted from when the fault was set.
Pools restart at the next request after the configuration changed; `DELETE /_emulator/faults` restarts them
only when a `ga4_quota` had been set (set `{"ga4_quota": {}}` to restart the default pools).
A refusal is a violation when the credential was already refused for this property and the pool has not
reset since, unless the request arrived within the base in-flight grace after that first refusal.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any
from zoneinfo import ZoneInfo

PACIFIC = ZoneInfo("America/Los_Angeles")

# The messages Airbyte's api_quota.py matches on (contract section 7), quoted exactly. The contract quotes no
# message for the property's daily or hourly pool: those two are our assumption, in the same style.
MESSAGES = {
    "tokensPerDay": "Exhausted property tokens per day.",  # assumption (not quoted by the contract)
    "tokensPerHour": "Exhausted property tokens per hour.",  # assumption (not quoted by the contract)
    "tokensPerProjectPerHour": "Exhausted property tokens for a project per hour.",
    "concurrentRequests": "Exhausted concurrent requests quota.",
    "serverErrorsPerProjectPerHour": "Exhausted server errors quota.",
    "potentiallyThresholdedRequestsPerHour": "Exhausted potentially thresholded requests quota.",
}
POOLS = ("tokensPerDay", "tokensPerHour", "concurrentRequests", "serverErrorsPerProjectPerHour",
         "potentiallyThresholdedRequestsPerHour", "tokensPerProjectPerHour")  # the order of the wire example
TOKEN_POOLS = ("tokensPerDay", "tokensPerHour", "tokensPerProjectPerHour")
THRESHOLDED = "potentiallyThresholdedRequestsPerHour"
_CHECKED = ("tokensPerDay", "tokensPerHour", "tokensPerProjectPerHour", "serverErrorsPerProjectPerHour",
            THRESHOLDED)  # which message wins when several pools are spent
ROWS_PER_TOKEN = 10_000


@dataclass(frozen=True)
class QuotaConfig:
    """Pool limits and periods; the defaults are a standard (not Analytics 360) property's."""

    tokens_per_day: int = 200_000
    tokens_per_hour: int = 40_000
    tokens_per_project_per_hour: int = 14_000
    concurrent_requests: int = 10
    server_errors_per_hour: int = 10
    thresholded_requests_per_hour: int = 120
    cost_per_request: int | None = None
    day_reset_s: float | None = None
    hour_reset_s: float | None = None
    set_at: float = field(default_factory=time.time, compare=False)

    def limit(self, pool: str) -> int:
        return {"tokensPerDay": self.tokens_per_day, "tokensPerHour": self.tokens_per_hour,
                "tokensPerProjectPerHour": self.tokens_per_project_per_hour,
                "concurrentRequests": self.concurrent_requests,
                "serverErrorsPerProjectPerHour": self.server_errors_per_hour,
                THRESHOLDED: self.thresholded_requests_per_hour}[pool]

    def cost(self, rows: int) -> int:
        return self.cost_per_request if self.cost_per_request is not None else 1 + rows // ROWS_PER_TOKEN

    def next_reset(self, pool: str, now: float) -> float:
        daily = pool == "tokensPerDay"
        step = self.day_reset_s if daily else self.hour_reset_s
        if step:
            return self.set_at + step * (math.floor((now - self.set_at) / step) + 1)
        if not daily:
            return (math.floor(now / 3600) + 1) * 3600.0
        tomorrow = dt.datetime.fromtimestamp(now, PACIFIC).date() + dt.timedelta(days=1)
        return dt.datetime.combine(tomorrow, dt.time(0), tzinfo=PACIFIC).timestamp()


DEFAULT_QUOTA = QuotaConfig(set_at=0.0)
_PERIODS = {"day_reset_s", "hour_reset_s"}


def parse_quota(value: Any, name: str) -> QuotaConfig:
    """The `ga4_quota` fault: validate the JSON object a test sent."""
    allowed = {f.name for f in fields(QuotaConfig)} - {"set_at"}
    if not isinstance(value, dict) or set(value) - allowed:
        raise ValueError(f"{name} must be an object with keys among {sorted(allowed)}, got {value!r}")
    for key, number in value.items():
        if key in _PERIODS:
            if isinstance(number, bool) or not isinstance(number, (int, float)) or number <= 0:
                raise ValueError(f"{name}.{key} must be a number of seconds > 0, got {number!r}")
        elif isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise ValueError(f"{name}.{key} must be an integer >= 0, got {number!r}")
    return QuotaConfig(**value)


@dataclass
class Pool:
    limit: int
    used: int = 0
    reset_at: float = 0.0


@dataclass
class Told:
    """The first refusal a credential got while the property's quota is spent, and when that quota resets."""

    issued_at: float
    until: float


@dataclass(frozen=True)
class Refusal:
    pool: str
    message: str
    violation: bool


class PropertyQuotas:
    """The pools of every property under one configuration, plus requests in flight per property."""

    def __init__(self) -> None:
        self._config: QuotaConfig | None = None
        self._pools: dict[str, dict[str, Pool]] = {}
        self._told: dict[tuple[str, str | None], Told] = {}
        self._in_flight: Counter[str] = Counter()

    def configure(self, config: QuotaConfig | None) -> QuotaConfig:
        """Use `config` (None: the defaults); a new configuration starts every pool afresh."""
        config = config or DEFAULT_QUOTA
        if config is not self._config:
            self._config = config
            self._pools.clear()
            self._told.clear()
        return config

    def _rolled(self, prop: str, now: float) -> dict[str, Pool]:
        config = self.configure(self._config)
        pools = self._pools.get(prop)
        if pools is None:
            pools = self._pools[prop] = {name: Pool(config.limit(name)) for name in POOLS}
        for name, pool in pools.items():
            if name != "concurrentRequests" and now >= pool.reset_at:
                pool.used = 0
                pool.reset_at = config.next_reset(name, now)
        return pools

    def enter(self, prop: str) -> int:
        """Count a request to `prop` as in flight; return how many are now, this one included."""
        self._in_flight[prop] += 1
        return self._in_flight[prop]

    def leave(self, prop: str) -> None:
        self._in_flight[prop] -= 1

    def server_error(self, prop: str, now: float) -> None:
        self._rolled(prop, now)["serverErrorsPerProjectPerHour"].used += 1

    def refusal(self, prop: str, credential: str | None, *, arrival: float, in_flight: int, now: float,
                grace_s: float, thresholded: bool) -> Refusal | None:
        """Why a request to `prop` must be refused now, or None when it may be answered.

        `in_flight` is how many requests to the property were in flight when this one arrived, itself included.
        """
        pools = self._rolled(prop, now)
        if in_flight > pools["concurrentRequests"].limit:
            return Refusal("concurrentRequests", MESSAGES["concurrentRequests"], violation=False)
        for name in _CHECKED:
            pool = pools[name]
            if pool.used < pool.limit or (name == THRESHOLDED and not thresholded):
                continue
            told = self._told.get((prop, credential))
            if told is None or arrival >= told.until:
                self._told[(prop, credential)] = Told(now, pool.reset_at)
                return Refusal(name, MESSAGES[name], violation=False)
            told.until = max(told.until, pool.reset_at)
            return Refusal(name, MESSAGES[name], violation=arrival >= told.issued_at + grace_s)
        return None

    def charge(self, prop: str, *, cost: int, thresholded: bool, now: float) -> dict[str, dict[str, int]]:
        """Spend `cost` tokens (and a thresholded request); return the response's `propertyQuota`."""
        pools = self._rolled(prop, now)
        consumed = dict.fromkeys(POOLS, 0)
        for name in TOKEN_POOLS:
            consumed[name] = cost
        consumed[THRESHOLDED] = int(thresholded)
        for name in TOKEN_POOLS + (THRESHOLDED,):
            pools[name].used += consumed[name]
        others = self._in_flight[prop] - 1  # this request is still in flight
        return {name: {"consumed": consumed[name],
                       "remaining": max(0, pools[name].limit - (others if name == "concurrentRequests"
                                                                else pools[name].used))}
                for name in POOLS}

    def cost(self, rows: int) -> int:
        return self.configure(self._config).cost(rows)

    def snapshot(self, props: list[str], now: float) -> dict[str, Any]:
        """Every property's pools (limit, used, seconds until reset) and requests in flight, for the admin API."""
        out: dict[str, Any] = {}
        for prop in props:
            pools = self._rolled(prop, now)
            out[prop] = {name: {"limit": pool.limit, "used": self._in_flight[prop] if name == "concurrentRequests"
                                else pool.used,
                                "reset_in_s": None if name == "concurrentRequests" else round(pool.reset_at - now, 3)}
                         for name, pool in pools.items()}
        return out
