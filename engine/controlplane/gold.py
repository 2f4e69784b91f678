"""Gold per tenant and env: the scopes the registry of tables knows, and applying the views to each.

A gold view covers every instance of its source type in one tenant and env (layers/gold/scope.py). Which
instances those are, and where their silver tables live, is read from `ipai_data_locations` (the silver
tables in Postgres on the server gold is applied to), so an instance appears in gold once it has a silver
table there, and a deleted instance, whose places the registry releases, leaves gold at the next apply.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from engine.controlplane.locations import server_identity
from layers.gold.apply import DEFAULT_DIRECTORY, GoldResult, apply_gold
from layers.addressing import DEFAULT_TENANT
from layers.gold.scope import GoldScope, SilverTable


def gold_scopes(conn: psycopg.Connection[Any], server: str, *, tenant: str | None = None,
                env: str | None = None) -> list[GoldScope]:
    """The (tenant, env) scopes with silver tables on `server` (`locations.server_identity`), each with its
    silver tables; only `tenant` and `env` when given."""
    prefix = f"postgres:{server}/"
    rows = conn.execute(
        "select t.name, d.env, i.name, d.source_type, d.stream, d.schema_name, d.table_name"
        " from ipai_data_locations d join connector_instances i on i.id = d.instance_id"
        " join ipai_tenants t on t.id = d.tenant_id"
        " where d.layer = 'silver' and left(d.location, length(%s)) = %s"
        " and (%s::text is null or t.name = %s) and (%s::text is null or d.env = %s)"
        " order by 1, 2, 3, 5", (prefix, prefix, tenant, tenant, env, env)).fetchall()
    found: dict[tuple[str, str], list[SilverTable]] = defaultdict(list)
    for tenant_name, env_name, instance, source_type, stream, schema, table in rows:
        found[(tenant_name, env_name)].append(SilverTable(instance, source_type, stream, schema, table))
    return [GoldScope(t, e, tuple(tables)) for (t, e), tables in found.items()]


def scope_for(conn: psycopg.Connection[Any], server: str, *, tenant: str, env: str) -> GoldScope:
    """The scope of one tenant and env on `server` (`locations.server_identity`; empty when it has no silver
    yet)."""
    scopes = gold_scopes(conn, server, tenant=tenant, env=env)
    return scopes[0] if scopes else GoldScope(tenant, env)


def apply_everywhere(conn: psycopg.Connection[Any], apply_conn: psycopg.Connection[Any], postgres_url: str,
                     directory: Path = DEFAULT_DIRECTORY, *, tenant: str | None = None,
                     default_tenant: str | None = None) -> Iterator[tuple[GoldScope, GoldResult]]:
    """Apply the views of `directory` to every scope (of `tenant`, when given) with silver on the server at
    `postgres_url`, through the autocommit `apply_conn` to it; to the prod scope of `tenant` (or
    `default_tenant`) when there is none yet."""
    fallback = tenant or default_tenant or DEFAULT_TENANT
    scopes = gold_scopes(conn, server_identity(postgres_url), tenant=tenant) or [GoldScope(fallback)]
    for scope in scopes:
        yield scope, apply_gold(apply_conn, directory, scope)
