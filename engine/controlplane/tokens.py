"""Bearer tokens for agents on the MCP server's HTTP transport: one tenant per token, hash-only storage.

A token is `ipai_` plus 43 URL-safe characters (256 random bits). The control plane keeps its SHA-256: a
leaked database dump gives no usable token, and a plain hash suffices because the token is random (no
password to brute-force). The token is printed once, by `ipai token create`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

import psycopg

from engine.controlplane.tenants import require_tenant
from engine.core.errors import ConfigError, NotFound

PREFIX = "ipai_"
NAME = re.compile(r"^[a-z][a-z0-9_-]{0,47}$")


@dataclass(frozen=True)
class TokenOwner:
    """Who a presented token acts for."""

    token_id: str
    name: str
    tenant_id: str
    tenant: str


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(conn: psycopg.Connection[Any], tenant: str, name: str) -> str:
    """Make a token for `tenant` (name or id) and return it; only its hash is stored."""
    if not NAME.match(name):
        raise ConfigError(f"token name {name!r}: lower case letters, digits, _ and -, starting with a letter")
    tenant_id = require_tenant(conn, tenant)
    token = PREFIX + secrets.token_urlsafe(32)
    try:
        conn.execute("insert into ipai_api_tokens (tenant_id, name, token_sha256) values (%s, %s, %s)",
                     (tenant_id, name, digest(token)))
    except psycopg.errors.UniqueViolation:
        raise ConfigError(f"tenant {tenant} already has a token named {name!r}; revoke it first "
                          f"(`ipai token revoke {name}`) or choose another name") from None
    return token


def list_tokens(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Every live token: name, tenant, created and last used (never the token or its hash)."""
    cur = conn.execute(
        "select k.name, t.name, k.created_at, k.last_used_at from ipai_api_tokens k"
        " join ipai_tenants t on t.id = k.tenant_id where k.revoked_at is null order by t.name, k.name")
    return [{"name": r[0], "tenant": r[1], "created_at": r[2], "last_used_at": r[3]} for r in cur.fetchall()]


def revoke_token(conn: psycopg.Connection[Any], tenant: str, name: str) -> None:
    cur = conn.execute("update ipai_api_tokens set revoked_at = now() where tenant_id = %s and name = %s"
                       " and revoked_at is null", (require_tenant(conn, tenant), name))
    if cur.rowcount == 0:
        raise NotFound(f"tenant {tenant} has no live token named {name!r}; `ipai token list` shows them")


def verify_token(conn: psycopg.Connection[Any], token: str) -> TokenOwner | None:
    """Return whom `token` acts for, or None when it is unknown or revoked."""
    if not token.startswith(PREFIX):
        return None
    row = conn.execute(
        "update ipai_api_tokens k set last_used_at = now() from ipai_tenants t"
        " where k.token_sha256 = %s and k.revoked_at is null and t.id = k.tenant_id"
        " returning k.id, k.name, k.tenant_id, t.name", (digest(token),)).fetchone()
    return TokenOwner(str(row[0]), row[1], str(row[2]), row[3]) if row else None
