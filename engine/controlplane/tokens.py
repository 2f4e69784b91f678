"""Bearer tokens for agents on the MCP server's HTTP transport: one tenant per token, hash-only storage.

A token is `ipai_` plus 43 URL-safe characters (256 random bits). The control plane keeps its SHA-256: a
leaked database dump gives no usable token, and a plain hash suffices because the token is random (no
password to brute-force). The token is printed once, by `ipai token create`.

A token may expire (`--expires 30d`); an expired one is refused with `TokenExpired`, whose message names the
token (never its value) and says to make a new one. `RequestBudget` caps the requests one token makes per
minute, so one agent cannot take the server for itself.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from engine.controlplane.tenants import require_tenant
from engine.core.errors import ConfigError, IpaiError, NotFound

PREFIX = "ipai_"
NAME = re.compile(r"^[a-z][a-z0-9_-]{0,47}$")
DURATION = re.compile(r"^\s*(\d+)\s*([hdw])\s*$")
UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}


class TokenExpired(IpaiError):
    """A presented token is past its expiry: the caller needs a new one."""


@dataclass(frozen=True)
class TokenOwner:
    """Who a presented token acts for."""

    token_id: str
    name: str
    tenant_id: str
    tenant: str
    expires_at: datetime | None = None


def parse_expiry(text: str) -> timedelta:
    """`12h`, `30d` or `8w` as a duration; anything else is a `ConfigError` saying what is accepted."""
    found = DURATION.match(text)
    if not found or int(found[1]) == 0:
        raise ConfigError(f"--expires {text!r}: give a positive number of hours, days or weeks, e.g. 12h, 30d, 8w")
    return int(found[1]) * UNITS[found[2]]


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(conn: psycopg.Connection[Any], tenant: str, name: str, *,
                 expires_in: timedelta | None = None) -> str:
    """Make a token for `tenant` (name or id) and return it; only its hash is stored. With `expires_in`, it is
    refused from that long after now (the database's clock)."""
    if not NAME.match(name):
        raise ConfigError(f"token name {name!r}: lower case letters, digits, _ and -, starting with a letter")
    tenant_id = require_tenant(conn, tenant)
    token = PREFIX + secrets.token_urlsafe(32)
    try:
        conn.execute("insert into ipai_api_tokens (tenant_id, name, token_sha256, expires_at)"
                     " values (%s, %s, %s, now() + %s)", (tenant_id, name, digest(token), expires_in))
    except psycopg.errors.UniqueViolation:
        raise ConfigError(f"tenant {tenant} already has a token named {name!r}; revoke it first "
                          f"(`ipai token revoke {name}`) or choose another name") from None
    return token


def list_tokens(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Every unrevoked token: name, tenant, created, last used and expiry (never the token or its hash)."""
    cur = conn.execute(
        "select k.name, t.name, k.created_at, k.last_used_at, k.expires_at, k.expires_at <= now()"
        " from ipai_api_tokens k join ipai_tenants t on t.id = k.tenant_id where k.revoked_at is null"
        " order by t.name, k.name")
    return [{"name": r[0], "tenant": r[1], "created_at": r[2], "last_used_at": r[3], "expires_at": r[4],
             "expired": bool(r[5])} for r in cur.fetchall()]


def revoke_token(conn: psycopg.Connection[Any], tenant: str, name: str) -> None:
    cur = conn.execute("update ipai_api_tokens set revoked_at = now() where tenant_id = %s and name = %s"
                       " and revoked_at is null", (require_tenant(conn, tenant), name))
    if cur.rowcount == 0:
        raise NotFound(f"tenant {tenant} has no live token named {name!r}; `ipai token list` shows them")


def verify_token(conn: psycopg.Connection[Any], token: str) -> TokenOwner | None:
    """Return whom `token` acts for, or None when it is unknown or revoked; raise `TokenExpired` when it expired."""
    if not token.startswith(PREFIX):
        return None
    row = conn.execute(
        "update ipai_api_tokens k set last_used_at = now() from ipai_tenants t"
        " where k.token_sha256 = %s and k.revoked_at is null and t.id = k.tenant_id"
        " and (k.expires_at is null or k.expires_at > now())"
        " returning k.id, k.name, k.tenant_id, t.name, k.expires_at", (digest(token),)).fetchone()
    if row:
        return TokenOwner(str(row[0]), row[1], str(row[2]), row[3], row[4])
    expired = conn.execute(
        "select k.name, t.name, k.expires_at from ipai_api_tokens k join ipai_tenants t on t.id = k.tenant_id"
        " where k.token_sha256 = %s and k.revoked_at is null", (digest(token),)).fetchone()
    if expired:
        raise TokenExpired(f"token {expired[0]!r} of tenant {expired[1]} expired at {expired[2]:%Y-%m-%d %H:%M %Z}; "
                           f"ask an admin for a new one (`ipai token revoke {expired[0]}`, then "
                           f"`ipai token create {expired[0]} --expires 30d`)")
    return None


class RequestBudget:
    """At most `per_minute` requests per token in any 60 seconds (a sliding window); 0 means no limit.

    Held by one server process: each server keeps its own count."""

    WINDOW_S = 60.0

    def __init__(self, per_minute: int, *, clock: Any = time.monotonic) -> None:
        self.per_minute, self.clock = per_minute, clock
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def spend(self, key: str) -> float | None:
        """Count one request of `key`; return None when it is within the budget, else the seconds to wait."""
        if self.per_minute <= 0:
            return None
        now = self.clock()
        with self._lock:
            seen = self._seen.setdefault(key, deque())
            while seen and seen[0] <= now - self.WINDOW_S:
                seen.popleft()
            if len(seen) >= self.per_minute:
                return max(0.0, seen[0] + self.WINDOW_S - now)
            seen.append(now)
            return None
