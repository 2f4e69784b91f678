"""Tenants and their members: who owns connectors, runs and secrets, and which Supabase users see them.

Creating tenants and adding members are admin acts (`ipai tenant ...`): they need the database owner's
connection, which row-level security does not limit.
"""

from __future__ import annotations

from typing import Any

import psycopg

from engine.core.errors import ConfigError, NotFound


def find_tenant(conn: psycopg.Connection[Any], tenant: str) -> str | None:
    """Return the id of the tenant with this name or id, or None when there is none."""
    row = conn.execute("select id from ipai_tenants where name = %s or id::text = %s", (tenant, tenant)).fetchone()
    return None if row is None else str(row[0])


def require_tenant(conn: psycopg.Connection[Any], tenant: str) -> str:
    """Return the id of the tenant with this name or id; raise NotFound saying how to make it."""
    tenant_id = find_tenant(conn, tenant)
    if tenant_id is None:
        raise NotFound(f"no tenant {tenant!r}; `ipai tenant create {tenant}` makes it")
    return tenant_id


def create_tenant(conn: psycopg.Connection[Any], name: str) -> str:
    """Create the tenant (an existing one is kept) and return its id; a name the schema refuses raises
    ConfigError."""
    try:
        row = conn.execute("insert into ipai_tenants (name) values (%s) on conflict (name) do update"
                           " set name = excluded.name returning id", (name,)).fetchone()
    except psycopg.errors.CheckViolation:
        raise ConfigError(f"tenant name {name!r}: lower case letters, digits and _, starting with a letter") from None
    assert row is not None
    return str(row[0])


def add_member(conn: psycopg.Connection[Any], tenant: str, user_id: str, *, owner: bool = False) -> None:
    """Let the Supabase user `user_id` (the JWT's sub) see and run the tenant's connectors, as owner or member
    (a member already there takes the new role)."""
    tenant_id = require_tenant(conn, tenant)
    try:
        conn.execute("insert into ipai_tenant_members (tenant_id, user_id, role) values (%s, %s::uuid, %s)"
                     " on conflict (tenant_id, user_id) do update set role = excluded.role",
                     (tenant_id, user_id, "owner" if owner else "member"))
    except psycopg.errors.InvalidTextRepresentation:
        raise ConfigError(f"user id {user_id!r} is not a uuid (the sub claim of the user's JWT)") from None
