"""RELIABILITY test 19: what the migrations leave in the catalog of a fresh database.

No function in public, ipai, vault or auth is executable by PUBLIC unless it is meant to be (the auth
claim readers); every SECURITY DEFINER function pins its search_path; every table in public and vault has
row-level security on and grants anon nothing. Migrating again changes nothing, and every connector is a
source type the database accepts. And on Supabase, where `auth.uid()` and the Vault already exist, the
compatibility migrations shadow none of it.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from connectors import CONNECTORS
from engine.controlplane.db import Database, migrate

FUNCTION_SCHEMAS = ("public", "ipai", "vault", "auth")
TABLE_SCHEMAS = ("public", "vault")
PUBLIC_BY_DESIGN = {"auth.uid()", "auth.jwt()", "auth.role()"}
"""Supabase grants these to everyone; policies call them for every role."""

OUR_FUNCTIONS = """
    from pg_proc p join pg_namespace n on n.oid = p.pronamespace
   where n.nspname = any(%(schemas)s)
     and not exists (select from pg_depend d  -- an extension's functions are the extension's business
                      where d.classid = 'pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e')
"""
SIGNATURE = "n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'"
RELATION = "n.nspname || '.' || c.relname"


def public_executable(conn: psycopg.Connection[Any]) -> set[str]:
    """Functions PUBLIC may execute: a NULL proacl means the default, which grants EXECUTE to PUBLIC."""
    return {r[0] for r in conn.execute(
        f"select {SIGNATURE} {OUR_FUNCTIONS}"
        "  and (p.proacl is null or exists (select from aclexplode(p.proacl) a"
        "                                   where a.grantee = 0 and a.privilege_type = 'EXECUTE'))",
        {"schemas": list(FUNCTION_SCHEMAS)})}


def definers_without_search_path(conn: psycopg.Connection[Any]) -> set[str]:
    return {r[0] for r in conn.execute(
        f"select {SIGNATURE} {OUR_FUNCTIONS}"
        "  and p.prosecdef and not exists (select from unnest(p.proconfig) c where c like 'search\\_path=%%')",
        {"schemas": list(FUNCTION_SCHEMAS)})}


def tables_without_rls(conn: psycopg.Connection[Any]) -> set[str]:
    return {r[0] for r in conn.execute(
        f"select {RELATION} from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where n.nspname = any(%s) and c.relkind in ('r', 'p') and not c.relrowsecurity",
        (list(TABLE_SCHEMAS),))}


def relations_anon_may_touch(conn: psycopg.Connection[Any]) -> set[str]:
    """Tables, views and sequences on which anon holds any privilege (its own, or PUBLIC's)."""
    return {r[0] for r in conn.execute(
        f"select {RELATION} from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where n.nspname = any(%s) and ("
        "   (c.relkind in ('r', 'p', 'v', 'm', 'f')"
        "    and (has_table_privilege('anon', c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')"
        "         or has_any_column_privilege('anon', c.oid, 'SELECT, INSERT, UPDATE, REFERENCES')))"
        "   or (c.relkind = 'S' and has_sequence_privilege('anon', c.oid, 'USAGE, SELECT, UPDATE')))",
        (list(TABLE_SCHEMAS),))}


@pytest.fixture(scope="module")
def conn(migrated_database: Database) -> Any:
    with migrated_database.connect() as c:
        yield c


def test_no_function_is_executable_by_public_unless_meant_to_be(conn: psycopg.Connection[Any]) -> None:
    assert public_executable(conn) - PUBLIC_BY_DESIGN == set()


def test_every_security_definer_function_pins_its_search_path(conn: psycopg.Connection[Any]) -> None:
    assert definers_without_search_path(conn) == set()


def test_every_table_has_row_level_security(conn: psycopg.Connection[Any]) -> None:
    assert tables_without_rls(conn) == set()


def test_anon_holds_no_privilege_on_any_table(conn: psycopg.Connection[Any]) -> None:
    assert relations_anon_may_touch(conn) == set()


def test_the_checks_see_what_they_look_for(conn: psycopg.Connection[Any]) -> None:
    """Each check above finds its problem when one is planted (so its empty answer means something)."""
    seen = {r[0] for r in conn.execute(f"select {SIGNATURE} {OUR_FUNCTIONS}", {"schemas": list(FUNCTION_SCHEMAS)})}
    assert {"public.secret_set(p_name text, p_value text)", "vault._key()", "auth.uid()"} <= seen
    with conn.transaction(force_rollback=True):
        conn.execute("create function public.careless() returns int language sql security definer as 'select 1'")
        conn.execute("create table public.careless_table (x int)")
        conn.execute("grant execute on function public.careless() to public")  # PostgreSQL's default, made plain
        conn.execute("grant select on public.careless_table to public")
        assert "public.careless()" in public_executable(conn)
        assert "public.careless()" in definers_without_search_path(conn)
        assert "public.careless_table" in tables_without_rls(conn)
        assert "public.careless_table" in relations_anon_may_touch(conn)


def catalog_snapshot(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "functions": conn.execute(
            f"select {SIGNATURE}, p.prosrc, p.proacl::text, p.proconfig, p.prosecdef {OUR_FUNCTIONS} order by 1",
            {"schemas": list(FUNCTION_SCHEMAS)}).fetchall(),
        "relations": conn.execute(
            f"select {RELATION}, c.relkind, c.relrowsecurity, c.relacl::text"
            " from pg_class c join pg_namespace n on n.oid = c.relnamespace"
            " where n.nspname in ('public', 'ipai', 'vault', 'auth', 'bronze') order by 1").fetchall(),
        "policies": conn.execute("select schemaname, tablename, policyname, roles::text, cmd, qual, with_check"
                                 " from pg_policies order by 1, 2, 3").fetchall(),
        "migrations": conn.execute("select version, sha256 from ipai_schema_migrations order by 1").fetchall(),
    }


def test_migrating_again_changes_nothing(conn: psycopg.Connection[Any]) -> None:
    before = catalog_snapshot(conn)
    assert migrate(conn) == []
    assert catalog_snapshot(conn) == before


def test_every_connector_is_a_source_type_the_database_knows(conn: psycopg.Connection[Any]) -> None:
    """`migrate` records the registry's source types (connectors.SOURCE_TYPES, read without importing a connector); it must name each
    connector, or `definition_upsert` refuses that connector's specs, and no other."""
    assert {r[0] for r in conn.execute("select name from ipai_source_types")} == set(CONNECTORS)


MARKERS = """
    create schema auth;
    create function auth.uid() returns uuid language sql stable
        as $$ select '5a5a5a5a-0000-4000-8000-000000000001'::uuid $$;
    create schema vault;
    create table vault.secrets (id uuid primary key default gen_random_uuid(), name text unique, secret text not null);
    create function vault.create_secret(new_secret text, new_name text default null, new_description text default '',
                                        new_key_id uuid default null) returns uuid language sql
        as $$ select '5a5a5a5a-0000-4000-8000-000000000002'::uuid $$;
"""


def test_on_supabase_nothing_is_shadowed(database: Database) -> None:
    """Where auth.uid() and the Vault exist before migrating (as on Supabase), they stay exactly as they were."""
    def markers(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
        return conn.execute(
            "select p.oid, p.prosrc, p.proacl::text from pg_proc p"
            " where p.oid in ('auth.uid()'::regprocedure, 'vault.create_secret(text, text, text, uuid)'::regprocedure)"
            " order by 1").fetchall()

    with database.connect() as conn:
        conn.execute(MARKERS)
        before = markers(conn)
        columns = conn.execute("select attname from pg_attribute where attrelid = 'vault.secrets'::regclass"
                               " and attnum > 0 order by attnum").fetchall()
        assert "20261130121000_vault_compat" in migrate(conn)

        assert markers(conn) == before
        assert conn.execute("select auth.uid()").fetchone()[0].hex.endswith("0001")
        assert conn.execute("select attname from pg_attribute where attrelid = 'vault.secrets'::regclass"
                            " and attnum > 0 order by attnum").fetchall() == columns
        compat = conn.execute(
            "select to_regprocedure('vault._key()'), to_regprocedure('vault._seal(text)'),"
            " to_regprocedure('vault.update_secret(uuid, text, text, text, uuid)'),"
            " to_regclass('vault.decrypted_secrets'), to_regclass('vault.key_fingerprint')").fetchone()
        assert compat == (None, None, None, None, None)
        # What was missing was still provided.
        assert conn.execute("select to_regprocedure('auth.jwt()') is not null").fetchone() == (True,)
