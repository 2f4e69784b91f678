"""Issue 16, holes 1, 6 and 12: a worker reads a tenant's secret only for a run it claimed, a signed-in session
without a user id acts for no tenant, and the worker role cannot push schedules forward.

Tenants A and B as in test_rls.py (each with a running run another worker holds, and a secret), plus the
`local` tenant with an instance and a secret. Each actor connects as PostgREST or a worker does (`set local
role ...`), inside a transaction rolled back at the end. On the code before 20261207120000_claimed_runs.sql a
worker flipped B's queued run to running and read B's secret, inserted runs as running, moved every schedule
forward with `ipai.schedule_due(<a future time>)`, and a JWT without `sub` listed, ran and overwrote `local`'s.
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import psycopg
import pytest

from engine.controlplane import records
from engine.controlplane.db import Database
from engine.controlplane.queue import claim, worker_database
from engine.controlplane.scheduler import tick
from engine.controlplane.settings import Settings
from engine.controlplane.vault import VaultSecretStore
from engine.core.errors import LeaseLost
from engine.run.worker import Worker
from tests.controlplane.test_rls import Tenant, seed_tenant
from tests.support.databases import migrated
from tests.support.rpc import rpc
from tests.support.vault import Vault

LOCAL = uuid.UUID("00000000-0000-0000-0000-000000000001")
NOT_CLAIMED = "is not claimed by this session"


@dataclass(frozen=True)
class World:
    db: Database
    tenants: dict[str, Tenant]
    local_instance: uuid.UUID


@pytest.fixture(scope="module")
def world(migrated_database: Database) -> World:
    db = migrated_database.with_session({"ipai.vault_key": base64.b64encode(secrets.token_bytes(32)).decode()})
    with db.connect() as conn:
        tenants = {"A": seed_tenant(conn, "claims_a"), "B": seed_tenant(conn, "claims_b")}
        _, local_instance, _ = conn.execute(
            "select * from ipai.register(%s, 'local_orders', 'sample', 'name: local_orders', 'dev', '0 6 * * *')",
            (LOCAL,)).fetchone()
        assert conn.execute("select public.secret_set('token_local', 'value of local')").fetchone()[0]["ok"]
    for label, tenant in tenants.items():
        with db.with_session({"ipai.tenant_id": str(tenant.id)}).connect() as conn:
            result = conn.execute("select public.secret_set(%s, %s)", (f"token_{label.lower()}", f"value of {label}"))
            assert result.fetchone()[0]["ok"]
    return World(db, tenants, local_instance)


@pytest.fixture()
def conn(world: World) -> Iterator[psycopg.Connection[Any]]:
    """The owner's connection (with the Vault key), inside a transaction rolled back after the test."""
    with world.db.connect() as c, c.transaction(force_rollback=True):
        yield c


@contextmanager
def acting_as(conn: psycopg.Connection[Any], role: str, *, claims: dict[str, Any] | None = None,
              claim_token: str | None = None) -> Iterator[psycopg.Connection[Any]]:
    """Act as `role` in a savepoint: with JWT claims as PostgREST sets them, or the claim token a worker's
    secret store sends at connection start. Back to the owner on leaving."""
    with conn.transaction():
        conn.execute(f"set local role {role}")
        if claims is not None:
            conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        conn.execute("select set_config('ipai.claim_token', %s, true)", (claim_token or "",))
        yield conn
        # On an exception the savepoint's rollback undoes the settings; on success they would outlive it.
        conn.execute("reset role")
        conn.execute("select set_config('request.jwt.claims', '', true), set_config('ipai.claim_token', '', true)")


def refused(conn: psycopg.Connection[Any], query: str, params: Any = None) -> str:
    """Run `query` in a savepoint; return the refusal's message (fail when it is not refused)."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
        with conn.transaction():
            conn.execute(query, params)
    return str(caught.value)


def queue_run(conn: psycopg.Connection[Any], tenant: Tenant) -> uuid.UUID:
    """As the owner: end the tenant's running run (its instance may have one active run) and queue another."""
    conn.execute("update connector_runs set status = 'succeeded', ended_at = now() where id = %s", (tenant.active_run,))
    return conn.execute("insert into connector_runs (instance_id, definition_id, status, trigger)"
                        " values (%s, %s, 'queued', 'rpc') returning id",
                        (tenant.instance, tenant.definition)).fetchone()[0]


def run_status(conn: psycopg.Connection[Any], run: uuid.UUID) -> tuple[str, str | None]:
    return conn.execute("select status, worker_id from connector_runs where id = %s", (run,)).fetchone()


# -- hole 1: secrets only through a claimed, live run ----------------------------------------------------


def test_a_worker_flipping_another_tenants_queued_run_reads_no_secret(world: World, conn: psycopg.Connection[Any]):
    queued = queue_run(conn, world.tenants["B"])
    with acting_as(conn, "ipai_worker"):
        flipped = conn.execute("update connector_runs set status = 'running',"
                               " lease_expires_at = now() + interval '1 hour' where id = %s", (queued,))
        assert flipped.rowcount == 0, "a worker moved a queued run to running without claiming it"
        assert "permission denied" in refused(conn, "update connector_runs set worker_id = 'thief' where id = %s",
                                              (queued,))
        assert "permission denied for function secret_read" in refused(
            conn, "select ipai.secret_read(%s, 'token_b')", (queued,))
        assert NOT_CLAIMED in refused(conn, "select ipai.claimed_secret_read(%s, 'token_b')", (queued,))
    assert run_status(conn, queued) == ("queued", None)


def test_a_worker_inserts_no_run_as_running_and_no_fresh_run(world: World, conn: psycopg.Connection[Any]):
    b = world.tenants["B"]
    conn.execute("update connector_runs set status = 'succeeded', ended_at = now() where id = %s", (b.active_run,))
    with acting_as(conn, "ipai_worker"):
        for status in ("running", "queued", "skipped"):
            message = refused(conn, "insert into connector_runs (instance_id, definition_id, status, trigger,"
                                    " worker_id, lease_expires_at) values (%s, %s, %s, 'cli', 'thief',"
                                    " now() + interval '1 hour')", (b.instance, b.definition, status))
            assert "row-level security" in message, status
    assert conn.execute("select count(*) from connector_runs where worker_id = 'thief'").fetchone() == (0,)


def test_a_worker_reads_secrets_only_for_the_run_it_claimed_while_its_lease_lives(world: World,
                                                                                 conn: psycopg.Connection[Any]):
    a, b = world.tenants["A"], world.tenants["B"]
    queued = queue_run(conn, b)
    with acting_as(conn, "ipai_worker"):
        [(run, token)] = conn.execute("select * from ipai.claim_run('worker-1', 60)").fetchall()
    assert run == queued and run_status(conn, run) == ("running", "worker-1")

    read = "select ipai.claimed_secret_read(%s, %s)"
    with acting_as(conn, "ipai_worker"):  # no token: as any other worker
        assert NOT_CLAIMED in refused(conn, read, (run, "token_b"))
    with acting_as(conn, "ipai_worker", claim_token=secrets.token_hex(32)):
        assert NOT_CLAIMED in refused(conn, read, (run, "token_b"))
    with acting_as(conn, "ipai_worker", claim_token=token):
        assert conn.execute(read, (run, "token_b")).fetchone() == ("value of B",)
        assert conn.execute(read, (run, "token_a")).fetchone() == (None,), "B's run reads only B's secrets"
        # A's running run is another worker's: this claim's token does not open it.
        assert NOT_CLAIMED in refused(conn, read, (a.active_run, "token_a"))
        # Nor can the worker make the run another's, or move it to A.
        assert "permission denied" in refused(conn, "update connector_runs set worker_id = 'worker-2' where id = %s",
                                              (run,))
        assert "permission denied" in refused(conn, "update connector_runs set tenant_id = %s, instance_id = %s,"
                                                    " definition_id = %s where id = %s",
                                              (a.id, a.instance, a.definition, run))
    logged = conn.execute("select fields from connector_run_logs where run_id = %s and event = 'secret.read'"
                          " order by id", (run,)).fetchall()
    assert [f["secret"] for (f,) in logged] == ["token_b", "token_a"]
    assert {f["worker"] for (f,) in logged} == {"worker-1"}

    conn.execute("update connector_runs set lease_expires_at = now() - interval '1 second' where id = %s", (run,))
    with acting_as(conn, "ipai_worker", claim_token=token):
        assert "lapsed at" in refused(conn, read, (run, "token_b"))
    conn.execute("update connector_runs set lease_expires_at = now() + interval '1 minute' where id = %s", (run,))
    with acting_as(conn, "ipai_worker", claim_token=token):
        conn.execute("update connector_runs set status = 'succeeded', ended_at = now() where id = %s", (run,))
        assert "has ended (succeeded)" in refused(conn, read, (run, "token_b"))
        assert "has ended (succeeded)" in refused(
            conn, "select ipai.claimed_secret_rotate(%s, 'token_b', 'planted')", (run,))
    assert conn.execute("select decrypted_secret from vault.decrypted_secrets where name = %s",
                        (f"ipai/{b.id}/token_b",)).fetchone() == ("value of B",)


def test_a_claimed_run_rotates_its_tenants_secret(world: World, conn: psycopg.Connection[Any]):
    b = world.tenants["B"]
    queue_run(conn, b)
    with acting_as(conn, "ipai_worker"):
        [(run, token)] = conn.execute("select * from ipai.claim_run('worker-1', 60)").fetchall()
    with acting_as(conn, "ipai_worker", claim_token=token):
        conn.execute("select ipai.claimed_secret_rotate(%s, 'token_b', 'rotated value')", (run,))
        assert conn.execute("select ipai.claimed_secret_read(%s, 'token_b')", (run,)).fetchone() == ("rotated value",)


def test_a_worker_queues_one_follow_up_of_a_run_that_ended(world: World, conn: psycopg.Connection[Any]):
    """Retries and resumptions, as reaping and a deferral queue them; nothing else."""
    a, b = world.tenants["A"], world.tenants["B"]
    follow = ("insert into connector_runs (instance_id, definition_id, status, trigger, retry_of)"
              " values (%s, %s, 'queued', 'retry', %s)")
    with acting_as(conn, "ipai_worker"):
        assert "row-level security" in refused(conn, follow, (b.instance, b.definition, b.run)), "of a succeeded run"
        conn.execute("update connector_runs set status = 'failed', ended_at = now() where id = %s", (b.active_run,))
        assert "row-level security" in refused(conn, follow, (a.instance, a.definition, b.active_run)), "elsewhere"
        assert conn.execute(follow, (b.instance, b.definition, b.active_run)).rowcount == 1
        ended = conn.execute("update connector_runs set status = 'cancelled' where retry_of = %s", (b.active_run,))
        assert ended.rowcount == 0, "a worker changes no queued run"
    conn.execute("update connector_runs set status = 'cancelled', ended_at = now() where retry_of = %s",
                 (b.active_run,))
    with acting_as(conn, "ipai_worker"):
        assert "row-level security" in refused(conn, follow, (b.instance, b.definition, b.active_run)), "a second"


# -- hole 6: a signed-in session without a user id acts for no tenant -----------------------------------


NO_SUB = {"no sub in the JWT": {"role": "authenticated", "aud": "authenticated"},
          "role authenticated, no claims": None}


@pytest.mark.parametrize("claims", NO_SUB.values(), ids=NO_SUB.keys())
def test_a_session_without_a_user_id_gets_no_tenant(world: World, conn: psycopg.Connection[Any],
                                                    claims: dict[str, Any] | None):
    with acting_as(conn, "authenticated", claims=claims):
        assert conn.execute("select ipai.current_tenant()").fetchone() == (None,)
        assert conn.execute("select public.connector_list()").fetchone()[0] == {"ok": True, "instances": []}
        assert conn.execute("select public.secret_list()").fetchone()[0] == {"ok": True, "secrets": []}
        for call in ("select public.secret_set('token_local', 'overwritten')",
                     "select public.connector_create('{\"name\": \"planted\", \"source_type\": \"sample\"}')"):
            assert conn.execute(call).fetchone()[0]["error"]["code"] == "no_tenant", call
        ran = conn.execute("select public.connector_run('local_orders')").fetchone()[0]
        assert ran["error"]["code"] == "not_found"
        status = conn.execute("select public.connector_status(null, %s)", (str(world.local_instance),)).fetchone()[0]
        assert status["error"]["code"] == "not_found"
    assert conn.execute("select decrypted_secret from vault.decrypted_secrets where name = %s",
                        (f"ipai/{LOCAL}/token_local",)).fetchone() == ("value of local",)
    assert conn.execute("select count(*) from connector_runs where instance_id = %s",
                        (world.local_instance,)).fetchone() == (0,)


def test_the_cli_and_the_service_role_still_act_for_the_sessions_tenant(world: World, conn: psycopg.Connection[Any]):
    """The fail-closed rule is for signed-in requests only: no JWT (the CLI) or service_role's keep theirs."""
    assert conn.execute("select ipai.current_tenant()").fetchone() == (LOCAL,)
    with acting_as(conn, "service_role", claims={"role": "service_role"}):
        assert conn.execute("select ipai.current_tenant()").fetchone() == (LOCAL,)


# -- hole 12: the worker role takes no time from anyone --------------------------------------------------


def test_the_worker_cannot_push_schedules_forward(world: World, conn: psycopg.Connection[Any]):
    marks = "select id, last_scheduled_for from connector_instances order by id"
    before = conn.execute(marks).fetchall()
    with acting_as(conn, "ipai_worker"):
        assert "permission denied for function schedule_due" in refused(
            conn, "select ipai.schedule_due(now() + interval '30 days')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            tick(conn, conn.execute("select now() + interval '30 days'").fetchone()[0])
        assert tick(conn) == 0, "nothing is due yet: every schedule counts from when it was set"
    assert conn.execute(marks).fetchall() == before
    assert conn.execute("select count(*) from connector_runs where scheduled_for is not null").fetchone() == (0,)
    assert conn.execute("select ipai.schedule_due(now() + interval '30 days')").fetchone()[0] > 0, (
        "the owner (drills) still names a time: the refusal above is the role's")


def test_a_workers_secret_store_reads_through_its_claim_and_says_why_not(database: Database, settings: Settings,
                                                                        vault: Vault):
    """The store a worker's run gets: reads with its claim; without it, the server's reason, not a traceback."""
    migrated(database)
    vault.set("api_token", "value of local")
    with database.connect() as conn:
        conn.execute("select ipai.register(%s, 'orders', 'sample', 'name: orders', 'dev', null)", (LOCAL,))
        assert rpc(conn, "select public.connector_run('orders')")["ok"]
    workers = worker_database(settings)
    with workers.connect() as conn:
        job = claim(conn, "worker-1", 60)
        assert job is not None and job.claim_token and job.claim_token not in repr(job)
        key = workers.session.get("ipai.vault_key")
        store = VaultSecretStore(workers.url, job.run_id, str(LOCAL), key=key, claim_token=job.claim_token)
        assert store.get("api_token") == "value of local"
        assert job.claim_token not in repr(store)
        for other, why in ((None, "permission denied for function secret_read"),
                           (secrets.token_hex(32), f"run {job.run_id} is not claimed by this session")):
            with pytest.raises(LeaseLost, match=why):
                replace(store, claim_token=other).get("api_token")
        records.finish_run(conn, job.run_id, status="succeeded")
    with pytest.raises(LeaseLost, match=rf"secret 'api_token' is not readable for run {job.run_id}: "
                                        rf"run {job.run_id} has ended \(succeeded\)"):
        store.get("api_token")


def test_a_worker_requeues_the_run_it_deferred_once(database: Database, settings: Settings):
    """The follow-ups a worker queues itself (engine.run.worker): allowed once, quietly refused after that."""
    migrated(database)
    with database.connect() as conn:
        conn.execute("select ipai.register(%s, 'orders', 'sample', 'name: orders', 'dev', null)", (LOCAL,))
        assert rpc(conn, "select public.connector_run('orders')")["ok"]
    with worker_database(settings).connect() as conn:
        job = claim(conn, "worker-1", 60)
        assert job is not None
        records.finish_run(conn, job.run_id, status="deferred", error="quota spent")
        follow = Worker._requeue(conn, job, trigger="resume", not_before=None)
        assert follow is not None
        conn.execute("update connector_runs set status = 'cancelled' where id = %s", (follow,))  # changes nothing
    with database.connect() as conn:
        assert conn.execute("select status, retry_of::text, trigger from connector_runs where id = %s",
                            (follow,)).fetchone() == ("queued", job.run_id, "resume")
        conn.execute("update connector_runs set status = 'cancelled', ended_at = now() where id = %s", (follow,))
    with worker_database(settings).connect() as conn:
        assert Worker._requeue(conn, job, trigger="resume", not_before=None) is None, "a second follow-up"
