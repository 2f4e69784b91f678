"""RELIABILITY test 17: row-level security keeps every actor to what it owns.

Two tenants, A and B, each with a member, rows in every control-plane table and a Vault secret. Each actor
connects exactly as PostgREST does (`set local role ...` and the JWT claims in `request.jwt.claims`, inside
one transaction) and tries every verb on every table. `EXPECTED` states the outcome for each actor, table
and verb, from the policy header of `20261130124000_rls.sql`:

    own     only the actor's tenant's rows: all of them seen / changed, none of the other tenant's
    all     both tenants' rows
    running both tenants' runs still running (a finished run is history; a queued one is claimed only through
            ipai.claim_run, see test_claimed_runs.py)
    none    nothing: no row seen or changed (zero rows, or refused with a permission or RLS error)

Claims a user can edit (`user_metadata`) must count for nothing: a stranger claiming tenant A and the
service role, and a member of A claiming B, get exactly what their memberships give.

Beyond the matrix: the Vault is closed to anon, users and the worker; a member cannot move a row to the
other tenant; the worker cannot update a finished run, nor write a row that points at the other tenant's
rows (a delete there would cascade into it). The worker inserts runs only as queued follow-ups of a run that
ended (test_claimed_runs.py), so the probe's `skipped` run is refused to it.
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from engine.controlplane.db import Database

VERBS = ("select", "insert", "update", "delete")

#                            select  insert  update    delete
MEMBER = {
    "ipai_tenants":          ("own", "none", "none",   "none"),
    "ipai_tenant_members":   ("own", "none", "none",   "none"),
    "connector_definitions": ("own", "own",  "own",    "own"),
    "connector_instances":   ("own", "own",  "own",    "own"),
    "connector_runs":        ("own", "none", "none",   "none"),
    "connector_extractions": ("own", "none", "none",   "none"),
    "connector_state":       ("own", "none", "none",   "none"),
    "connector_run_logs":    ("own", "none", "none",   "none"),
    "webhook_deliveries":    ("own", "none", "none",   "none"),
    "pipeline_runs":         ("own", "none", "none",   "none"),
    "ipai_api_tokens":       ("none", "none", "none",  "none"),
    "ipai_data_locations":   ("own", "none", "none",   "none"),
}
WORKER = {
    "ipai_tenants":          ("all",  "none", "none",   "none"),  # names address the tenants' tables
    "ipai_tenant_members":   ("none", "none", "none",   "none"),
    "connector_definitions": ("all",  "none", "none",   "none"),
    "connector_instances":   ("all",  "none", "none",   "none"),
    "connector_runs":        ("all",  "none", "running", "none"),
    "connector_extractions": ("all",  "all",  "all",    "none"),
    "connector_state":       ("all",  "all",  "all",    "none"),
    "connector_run_logs":    ("all",  "all",  "none",   "none"),
    "webhook_deliveries":    ("all",  "all",  "none",   "none"),
    "pipeline_runs":         ("none", "none", "none",   "none"),
    "ipai_api_tokens":       ("none", "none", "none",   "none"),
    "ipai_data_locations":   ("all",  "none", "none",   "none"),  # claimed through ipai.claim_locations only
}
NOTHING = {table: ("none", "none", "none", "none") for table in MEMBER}

EXPECTED = {
    "anon": NOTHING,
    "member of A": MEMBER,
    "member of B": MEMBER,
    "worker": WORKER,
    "stranger claiming A and service_role in user_metadata": NOTHING,
    "member of A claiming B in user_metadata": MEMBER,
}


@dataclass(frozen=True)
class Table:
    """How the probes reach one table: its tenant column, a row to insert, a no-op update."""

    name: str
    insert: str
    touch: str
    tenant_column: str = "tenant_id"
    deletable: str = "true"
    """Which of a tenant's rows a delete aims at (the rest are held by foreign keys, whoever deletes)."""


WEBHOOK_DELIVERY = ("insert into webhook_deliveries (run_id, instance_id, delivery_id, url, event, attempt, delivered,"
                    " duration_ms) values (%(run)s, %(instance)s, gen_random_uuid(), 'https://probe.example', "
                    "'run.succeeded', 1, true, 1)")
PIPELINE_RUN = ("insert into pipeline_runs (tenant_id, name, source, base_dir, definition)"
                " values (%(tenant)s, 'probe', 'probe.yaml', '.', 'pipeline: probe')")
API_TOKEN = ("insert into ipai_api_tokens (tenant_id, name, token_sha256) values (%(tenant)s,"
             " 'probe-' || left(gen_random_uuid()::text, 8), encode(sha256(gen_random_uuid()::text::bytea), 'hex'))")

DATA_LOCATION = ("insert into ipai_data_locations (location, tenant_id, instance_id, env, source_type, stream, layer,"
                 " table_name) values ('probe:' || gen_random_uuid(), %(tenant)s, %(instance)s, 'dev', 'sample',"
                 " 'probe', 'bronze', 'raw_probe')")

TABLES = {t.name: t for t in (
    Table("ipai_tenants", "insert into ipai_tenants (name) values ('probe_' || left(%(tenant)s::text, 8))",
          touch="name = name", tenant_column="id"),
    Table("ipai_tenant_members",
          "insert into ipai_tenant_members (tenant_id, user_id) values (%(tenant)s, gen_random_uuid())",
          touch="role = role"),
    Table("connector_definitions",
          "insert into connector_definitions (tenant_id, name, type, yaml_spec, spec_sha256, version)"
          " values (%(tenant)s, 'probe', 'sample', 'probe', 'probe', 1)",
          touch="enabled = enabled", deletable="version = 1"),  # v1 was superseded; v2 is in use
    Table("connector_instances",
          "insert into connector_instances (definition_id, name, env) values (%(definition)s, 'probe', 'probe')",
          touch="env = env"),
    Table("connector_runs",
          "insert into connector_runs (instance_id, definition_id, status, trigger)"
          " values (%(instance)s, %(definition)s, 'skipped', 'probe')",
          touch="error = error"),
    Table("connector_extractions",
          "insert into connector_extractions (instance_id, stream, sync_mode, partitions, status)"
          " values (%(instance)s, 'probe', 'full_refresh', '[]', 'done')",
          touch="finished_at = finished_at"),
    Table("connector_state",
          "insert into connector_state (instance_id, stream, kind, key) values (%(instance)s, 'probe', 'cursor', 'probe')",
          touch="rows = rows"),
    Table("connector_run_logs",
          "insert into connector_run_logs (run_id, level, event, message) values (%(run)s, 'info', 'probe', 'probe')",
          touch="message = message"),
    Table("webhook_deliveries", WEBHOOK_DELIVERY, touch="error = error"),
    Table("pipeline_runs", PIPELINE_RUN, touch="error = error"),
    Table("ipai_api_tokens", API_TOKEN, touch="name = name"),
    Table("ipai_data_locations", DATA_LOCATION, touch="stream = stream"),
)}


@dataclass(frozen=True)
class Tenant:
    id: uuid.UUID
    member: uuid.UUID
    definition: uuid.UUID
    instance: uuid.UUID
    run: uuid.UUID
    """A succeeded run: finished, history."""
    active_run: uuid.UUID
    """A run still running."""

    @property
    def ids(self) -> dict[str, Any]:
        return {"tenant": self.id, "definition": self.definition, "instance": self.instance, "run": self.run}


@dataclass(frozen=True)
class World:
    db: Database
    tenants: dict[str, Tenant]
    stranger: uuid.UUID


@dataclass(frozen=True)
class Actor:
    role: str
    tenant: str | None
    """The tenant ("A" or "B") whose rows the actor owns, if any."""
    claims: dict[str, Any] | None


def seed_tenant(conn: psycopg.Connection[Any], name: str) -> Tenant:
    """A tenant with a member, a definition in two versions (v2 in use), an instance, a succeeded run with
    its extraction, state and logs, and a running run."""
    tenant = conn.execute("insert into ipai_tenants (name) values (%s) returning id", (name,)).fetchone()[0]
    member = uuid.uuid4()
    conn.execute("insert into ipai_tenant_members (tenant_id, user_id) values (%s, %s)", (tenant, member))
    for text in ("name: orders  # v1", "name: orders  # v2"):
        definition, instance, _ = conn.execute(
            "select * from ipai.register(%s, 'orders', 'sample', %s, 'dev', '0 6 * * *')", (tenant, text)).fetchone()
    run = conn.execute(
        "insert into connector_runs (instance_id, definition_id, status, trigger, started_at, ended_at, rows_processed)"
        " values (%s, %s, 'succeeded', 'cli', now() - interval '1 hour', now(), 10) returning id",
        (instance, definition)).fetchone()[0]
    active_run = conn.execute(
        "insert into connector_runs (instance_id, definition_id, status, trigger, started_at, worker_id,"
        " lease_expires_at) values (%s, %s, 'running', 'schedule', now(), 'seed:1:w', now() + interval '5 minutes')"
        " returning id", (instance, definition)).fetchone()[0]
    extraction = conn.execute(
        "insert into connector_extractions (instance_id, stream, run_id, sync_mode, partitions, status, finished_at)"
        " values (%s, 'orders', %s, 'incremental', '[\"p1\"]', 'done', now()) returning id",
        (instance, run)).fetchone()[0]
    conn.execute(
        "insert into connector_state (instance_id, stream, kind, key, extraction_id, run_id, rows, state_json)"
        " values (%(i)s, 'orders', 'partition', 'p1', %(e)s, %(r)s, 10, '{}'),"
        "        (%(i)s, 'orders', 'cursor', 'updated_at', null, %(r)s, null, '{\"value\": \"2026-01-01\"}')",
        {"i": instance, "e": extraction, "r": run})
    for r in (run, active_run):
        conn.execute("insert into connector_run_logs (run_id, level, event, message) values (%s, 'info', 'run.started', 'started')",
                     (r,))
    ids = {"tenant": tenant, "instance": instance, "run": run}
    for statement in (WEBHOOK_DELIVERY, PIPELINE_RUN, API_TOKEN, DATA_LOCATION):
        conn.execute(statement, ids)
    return Tenant(tenant, member, definition, instance, run, active_run)


@pytest.fixture(scope="module")
def world(migrated_database: Database) -> World:
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    with migrated_database.connect() as conn:
        tenants = {"A": seed_tenant(conn, "tenant_a"), "B": seed_tenant(conn, "tenant_b")}
    for label, tenant in tenants.items():
        session = {"ipai.tenant_id": str(tenant.id), "ipai.vault_key": key}
        with migrated_database.with_session(session).connect() as conn:
            result = conn.execute("select public.secret_set(%s, %s)", (f"token_{label.lower()}", f"value of {label}"))
            assert result.fetchone()[0]["ok"]
    return World(migrated_database, tenants, stranger=uuid.uuid4())


def actors(world: World) -> dict[str, Actor]:
    a, b = world.tenants["A"], world.tenants["B"]
    member = {"role": "authenticated", "aud": "authenticated"}
    return {
        "anon": Actor("anon", None, {"role": "anon"}),
        "member of A": Actor("authenticated", "A", {**member, "sub": str(a.member)}),
        "member of B": Actor("authenticated", "B", {**member, "sub": str(b.member)}),
        "worker": Actor("ipai_worker", None, None),
        "stranger claiming A and service_role in user_metadata": Actor("authenticated", None, {
            **member, "sub": str(world.stranger),
            "user_metadata": {"tenant_id": str(a.id), "role": "service_role"}}),
        "member of A claiming B in user_metadata": Actor("authenticated", "A", {
            **member, "sub": str(a.member), "user_metadata": {"tenant_id": str(b.id)}}),
    }


@pytest.fixture(scope="module")
def conn(world: World) -> Iterator[psycopg.Connection[Any]]:
    """The owner's connection; each test acts inside a transaction that is rolled back."""
    with world.db.connect() as c:
        yield c


@contextmanager
def acting_as(conn: psycopg.Connection[Any], actor: Actor) -> Iterator[psycopg.Connection[Any]]:
    """Run as `actor` the way PostgREST sets up a request, in a transaction rolled back at the end."""
    with conn.transaction(force_rollback=True):
        conn.execute(sql.SQL("set local role {}").format(sql.Identifier(actor.role)))
        if actor.claims is not None:
            conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(actor.claims),))
        yield conn


def attempt(conn: psycopg.Connection[Any], query: str, params: dict[str, Any] | None = None) -> psycopg.Cursor[Any] | None:
    """Run `query` in a savepoint; None when refused (a permission or row-level security error)."""
    try:
        with conn.transaction():
            return conn.execute(query, params)
    except psycopg.errors.InsufficientPrivilege:
        return None


def owner_rows(conn: psycopg.Connection[Any], table: Table, where: str, params: dict[str, Any]) -> list[str]:
    return [r[0] for r in conn.execute(
        f"select t::text from {table.name} t where {where} order by 1", params)]


def allowed_tenants(scope: str, actor: Actor) -> set[str]:
    return {"own": {actor.tenant} - {None}, "all": {"A", "B"}, "running": {"A", "B"}, "none": set()}[scope]


def cases(*verbs: str) -> list[Any]:
    return [pytest.param(actor, table, verb, id=f"{actor}-{table}-{verb}")
            for actor in EXPECTED for table in MEMBER for verb in verbs]


def expectation(world: World, actor_name: str, table_name: str, verb: str) -> tuple[Actor, Table, str]:
    return actors(world)[actor_name], TABLES[table_name], EXPECTED[actor_name][table_name][VERBS.index(verb)]


@pytest.mark.parametrize(("actor_name", "table_name", "verb"), cases("select"))
def test_actor_sees_exactly_the_rows_it_owns(world: World, conn: psycopg.Connection[Any],
                                             actor_name: str, table_name: str, verb: str) -> None:
    actor, table, scope = expectation(world, actor_name, table_name, verb)
    where = {"own": f"{table.tenant_column} = %(tenant)s", "all": "true", "none": "false"}[scope]
    own = {"tenant": world.tenants[actor.tenant].id if actor.tenant else None}
    expected = owner_rows(conn, table, where, own)
    assert scope == "none" or expected, "the seeded rows exist (as the owner sees them)"
    with acting_as(conn, actor):
        cur = attempt(conn, f"select t::text from {table.name} t order by 1")
        seen = [r[0] for r in cur] if cur else []
    assert seen == expected


@pytest.mark.parametrize(("actor_name", "table_name", "verb"), cases("insert"))
def test_actor_inserts_only_rows_it_owns(world: World, conn: psycopg.Connection[Any],
                                         actor_name: str, table_name: str, verb: str) -> None:
    """A row for the other tenant (its tenant_id, or a parent of its) is refused."""
    actor, table, scope = expectation(world, actor_name, table_name, verb)
    for label, tenant in world.tenants.items():
        with acting_as(conn, actor):
            inserted = attempt(conn, table.insert, tenant.ids) is not None
        assert inserted == (label in allowed_tenants(scope, actor)), f"a row of tenant {label}"


@pytest.mark.parametrize(("actor_name", "table_name", "verb"), cases("update", "delete"))
def test_actor_changes_only_rows_it_owns(world: World, conn: psycopg.Connection[Any],
                                         actor_name: str, table_name: str, verb: str) -> None:
    """Every row of a tenant the actor may change is changed; of any other, none (or the verb is refused)."""
    actor, table, scope = expectation(world, actor_name, table_name, verb)
    for label, tenant in world.tenants.items():
        target = f"{table.tenant_column} = %(tenant)s"
        if verb == "update":
            statement = f"update {table.name} set {table.touch} where {target}"
        else:
            target += f" and {table.deletable}"
            statement = f"delete from {table.name} where {target}"
        assert owner_rows(conn, table, target, tenant.ids), f"tenant {label} has rows to {verb} (as the owner sees)"
        if scope == "running":
            target += " and status = 'running'"
        allowed = label in allowed_tenants(scope, actor)
        expected = len(owner_rows(conn, table, target, tenant.ids)) if allowed else 0
        with acting_as(conn, actor):
            cur = attempt(conn, statement, tenant.ids)
            changed = cur.rowcount if cur else 0
        assert changed == expected, f"rows of tenant {label}"


def test_every_probe_works_for_the_table_owner(world: World, conn: psycopg.Connection[Any]) -> None:
    """So a refusal in the matrix comes from a policy or grant, not from a broken probe."""
    for table in TABLES.values():
        for tenant in world.tenants.values():
            with conn.transaction(force_rollback=True):
                assert conn.execute(table.insert, tenant.ids).rowcount == 1, table.name
                target = f"{table.tenant_column} = %(tenant)s"
                update = f"update {table.name} set {table.touch} where {target}"
                assert conn.execute(update, tenant.ids).rowcount > 0, table.name
                delete = f"delete from {table.name} where {target} and {table.deletable}"
                if table.name == "ipai_tenants":  # a tenant with definitions is held by their foreign key
                    with pytest.raises(psycopg.errors.ForeignKeyViolation):
                        conn.execute(delete, tenant.ids)
                else:
                    assert conn.execute(delete, tenant.ids).rowcount > 0, table.name


def test_both_tenants_have_rows_in_every_table_and_a_secret(world: World, conn: psycopg.Connection[Any]) -> None:
    """Children were inserted without tenant_id: the trigger gave each its parent's tenant."""
    for table in TABLES.values():
        for label, tenant in world.tenants.items():
            count = conn.execute(f"select count(*) from {table.name} where {table.tenant_column} = %s",
                                 (tenant.id,)).fetchone()[0]
            assert count > 0, f"{table.name} has rows of tenant {label}"
    names = [r[0] for r in conn.execute("select name from vault.secrets order by name")]
    assert names == sorted(f"ipai/{t.id}/token_{label.lower()}" for label, t in world.tenants.items())


VAULT_READS = [
    "select * from vault.secrets",
    "select * from vault.decrypted_secrets",
    "select * from vault.key_fingerprint",
    "select vault._open(%(sealed)s)",
    "select vault.create_secret('x', 'planted')",
]


@pytest.mark.parametrize("actor_name", list(EXPECTED))
@pytest.mark.parametrize("query", VAULT_READS)
def test_only_admins_reach_the_vault(world: World, conn: psycopg.Connection[Any], actor_name: str, query: str) -> None:
    sealed = conn.execute("select secret from vault.secrets limit 1").fetchone()[0]
    with acting_as(conn, actors(world)[actor_name]):
        assert attempt(conn, query, {"sealed": sealed} if "%(" in query else None) is None


def test_members_list_only_their_own_tenants_secrets(world: World, conn: psycopg.Connection[Any]) -> None:
    listed = {}
    for name, actor in actors(world).items():
        if actor.role == "authenticated":
            with acting_as(conn, actor):
                listed[name] = [s["name"] for s in conn.execute("select public.secret_list()").fetchone()[0]["secrets"]]
    assert listed == {
        "member of A": ["token_a"],
        "member of B": ["token_b"],
        "stranger claiming A and service_role in user_metadata": [],
        "member of A claiming B in user_metadata": ["token_a"],
    }


@pytest.mark.parametrize("actor_name", ["anon", "worker"])
def test_anon_and_the_worker_cannot_call_the_secret_rpcs(world: World, conn: psycopg.Connection[Any],
                                                        actor_name: str) -> None:
    with acting_as(conn, actors(world)[actor_name]):
        assert attempt(conn, "select public.secret_list()") is None
        assert attempt(conn, "select public.secret_set('planted', 'x')") is None


def test_worker_updates_an_active_run_but_never_a_finished_one(world: World, conn: psycopg.Connection[Any]) -> None:
    a = world.tenants["A"]
    with acting_as(conn, actors(world)["worker"]):
        finished = conn.execute("update connector_runs set status = 'running', ended_at = null where id = %s", (a.run,))
        assert finished.rowcount == 0
        active = conn.execute("update connector_runs set status = 'succeeded', ended_at = now() where id = %s",
                              (a.active_run,))
        assert active.rowcount == 1
    assert conn.execute("select status from connector_runs where id = %s", (a.run,)).fetchone() == ("succeeded",)


def test_a_member_cannot_hand_a_row_to_another_tenant(world: World, conn: psycopg.Connection[Any]) -> None:
    a, b = world.tenants["A"], world.tenants["B"]
    member_of_a = actors(world)["member of A"]
    with acting_as(conn, member_of_a):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute("update connector_definitions set tenant_id = %s where id = %s", (b.id, a.definition))
    with acting_as(conn, member_of_a):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            # The trigger gives the row its definition's tenant (B) whatever tenant_id says.
            conn.execute("insert into connector_instances (tenant_id, definition_id, name) values (%s, %s, 'probe')",
                         (a.id, b.definition))
    with acting_as(conn, member_of_a):
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("update connector_instances set definition_id = %s where id = %s", (b.definition, a.instance))


def test_a_member_without_tenant_id_writes_into_their_own_tenant(world: World, conn: psycopg.Connection[Any]) -> None:
    with acting_as(conn, actors(world)["member of A claiming B in user_metadata"]):
        row = conn.execute("insert into connector_definitions (name, type, yaml_spec, spec_sha256, version)"
                           " values ('probe', 'sample', 'probe', 'probe', 1) returning tenant_id").fetchone()
    assert row == (world.tenants["A"].id,)


MIXED_ROWS = {  # a row of tenant A (by its instance) pointing at a row of tenant B
    "run of A's instance with B's definition":
        "insert into connector_runs (instance_id, definition_id, status) values (%(a_instance)s, %(b_definition)s, 'skipped')",
    "retry of B's run":
        "insert into connector_runs (instance_id, definition_id, status, retry_of)"
        " values (%(a_instance)s, %(a_definition)s, 'skipped', %(b_run)s)",
    "extraction read by B's run":
        "insert into connector_extractions (instance_id, stream, sync_mode, partitions, run_id)"
        " values (%(a_instance)s, 'probe', 'full_refresh', '[]', %(b_run)s)",
    "state committed by B's run":
        "insert into connector_state (instance_id, stream, kind, key, run_id)"
        " values (%(a_instance)s, 'probe', 'cursor', 'probe', %(b_run)s)",
    "state of B's extraction":
        "insert into connector_state (instance_id, stream, kind, key, extraction_id)"
        " values (%(a_instance)s, 'orders', 'partition', 'probe', (select id from connector_extractions"
        "                                                          where tenant_id = %(b_tenant)s limit 1))",
}


REFUSED_BY_POLICY = {"run of A's instance with B's definition", "retry of B's run"}
"""A worker inserts runs only as queued follow-ups (20261207120000_claimed_runs.sql): refused before the keys."""


@pytest.mark.parametrize("statement", MIXED_ROWS.values(), ids=MIXED_ROWS.keys())
def test_worker_cannot_link_a_row_to_another_tenants_row(world: World, conn: psycopg.Connection[Any],
                                                          statement: str) -> None:
    """Else a delete in tenant B would cascade into tenant A's rows, or A's row would name B's."""
    ids = {f"{label.lower()}_{k}": v for label, t in world.tenants.items() for k, v in t.ids.items()}
    name = next(k for k, v in MIXED_ROWS.items() if v == statement)
    refusal = (psycopg.errors.InsufficientPrivilege if name in REFUSED_BY_POLICY
               else psycopg.errors.ForeignKeyViolation)
    with acting_as(conn, actors(world)["worker"]):
        with pytest.raises(refusal):
            conn.execute(statement, ids)
    with conn.transaction(force_rollback=True):  # the same statement within one tenant is fine
        same = statement.replace("%(b_", "%(a_")
        assert conn.execute(same, ids).rowcount == 1


def test_a_log_belongs_to_its_runs_tenant_whatever_the_writer_says(world: World,
                                                                   conn: psycopg.Connection[Any]) -> None:
    a, b = world.tenants["A"], world.tenants["B"]
    with acting_as(conn, actors(world)["worker"]):
        row = conn.execute("insert into connector_run_logs (tenant_id, run_id, level, event, message)"
                           " values (%s, %s, 'info', 'probe', 'probe') returning tenant_id", (a.id, b.run)).fetchone()
        assert row == (b.id,)
