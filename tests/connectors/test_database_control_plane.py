"""Database sources stay out of the control plane (issue 15): a spec pointed at the control-plane database as the
platform's own roles is refused, by any host name, address or socket, before any row is read; a dedicated role that
can read only app tables reads them (in a multi-tenant deployment only with the operator's leave); another database
on the same server syncs where loopback is allowed.

The control plane is the test's `database` (on the test server, trusting local connections, as the README's
default does); its app table `app.items` sits beside the platform's tables, as in a Supabase project.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from connectors.database import DatabaseStream, TableSpec
from connectors.specload import parse_spec
from engine.controlplane import tenants
from engine.core.egress import EgressPolicy
from engine.core.errors import ConfigError, RunFailed
from engine.core.protocol import Partition, ReadContext
from engine.run.sources import control_plane
from tests.support.databases import migrated
from tests.support.syncing import sync
from tests.support.truth import bronze_postgres, bronze_table

pytestmark = pytest.mark.usefixtures("ray_cluster")

SOCKET = "/var/run/postgresql"
ITEMS = 40


def spec_text(url: str, table: str = "app.items", *, name: str = "cp") -> str:
    return (f"name: {name}\nsource_type: database\nsync_mode: full\nsource:\n  url: '{url}'\n"
            f"  tables:\n    - {{table: {table}, name: items}}\n")


def with_app_table(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create schema app; create table app.items (id int primary key, name text)")
        conn.execute("insert into app.items select g, 'item ' || g from generate_series(1, %s) g", (ITEMS,))


@pytest.fixture
def control(database: Any) -> Any:
    """The control-plane database, migrated, with an app table beside the platform's; skipped unless the test
    server listens on 127.0.0.1 (the refusals are shown through localhost, 127.0.0.1 and its socket)."""
    if urlsplit(database.url).hostname != "127.0.0.1":
        pytest.skip("the control plane is not on the local server at 127.0.0.1")
    migrated(database)
    with_app_table(database.url)
    return database


def url_as(database: Any, user: str, via: str) -> str:
    """The database's URL as `user`, reached through `via`: a host name, an address or the socket folder."""
    parts = urlsplit(database.url)
    name = parts.path.lstrip("/")
    if via == "socket":
        if not Path(SOCKET).is_dir():
            pytest.skip(f"no PostgreSQL socket folder {SOCKET}")
        return f"postgresql://{user}@/{name}?host={SOCKET}&port={parts.port or 5432}"
    return f"postgresql://{user}@{via}:{parts.port or 5432}/{name}"


def run_of(database: Any, failed: RunFailed) -> tuple[str, str, int, int]:
    """(status, error, rows read, extractions planned) of the failed run, as `ipai runs` shows it."""
    with database.connect() as conn:
        row = conn.execute("select r.status, r.error, coalesce(r.rows_processed, 0), (select count(*) from"
                           " connector_extractions e where e.run_id = r.id) from connector_runs r where r.id = %s",
                           (failed.run_id,)).fetchone()
    assert row is not None
    return row


@pytest.fixture
def app_reader(control: Any) -> Iterator[str]:
    """A dedicated login role that can read only `app.items`."""
    role = f"app_reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(control.url, autocommit=True) as conn:
        conn.execute(f"create role {role} login")
        conn.execute(f"grant usage on schema app to {role}; grant select on app.items to {role}")
    yield role
    with psycopg.connect(control.url, autocommit=True) as conn:
        conn.execute(f"drop owned by {role}; drop role {role}")


@pytest.mark.parametrize("user, reason", [
    ("ipai_worker", "role ipai_worker is a role of the platform"),
    ("postgres", "role postgres is a superuser"),
])
@pytest.mark.parametrize("via", ["localhost", "127.0.0.1", "socket"])
def test_the_control_plane_as_the_platform_is_refused_before_any_row_is_read(control, settings, user, reason, via):
    url = url_as(control, user, via)
    with pytest.raises(RunFailed) as failed:
        sync(settings, control, spec_text(url))
    message = str(failed.value)
    assert f"is the control-plane database, and {reason}: it could read every tenant's" in message
    assert "Connect as a dedicated role that can read only your app tables" in message
    status, error, rows, extractions = run_of(control, failed.value)
    assert (status, rows, extractions) == ("failed", 0, 0), "refused while planning: nothing read, nothing planned"
    assert reason in error


def test_a_read_only_app_role_reads_only_its_app_table(control, settings, app_reader):
    text = spec_text(url_as(control, app_reader, "127.0.0.1"))
    result = sync(settings, control, text)
    assert result.status == "succeeded" and result.rows == ITEMS
    got = bronze_postgres(control.url, bronze_table(parse_spec(text), "items"))
    assert sorted(got.column("id").to_pylist()) == list(range(1, ITEMS + 1))

    logs = spec_text(url_as(control, app_reader, "127.0.0.1"), "public.connector_run_logs", name="cp_logs")
    with pytest.raises(RunFailed, match=r"permission denied for table connector_run_logs") as failed:
        sync(settings, control, logs)
    assert run_of(control, failed.value)[2] == 0


def test_a_multi_tenant_deployment_needs_the_operators_leave(control, settings, app_reader, source_database,
                                                             monkeypatch):
    with control.connect() as conn:
        tenants.create_tenant(conn, "other")
    text = spec_text(url_as(control, app_reader, "127.0.0.1"))
    with pytest.raises(RunFailed, match=r"is the control-plane database of a deployment with 2 tenants; reading app "
                                        r"tables there needs the operator's leave: IPAI_SOURCES_IN_CONTROL_PLANE=allow"):
        sync(settings, control, text)

    # On another database of the control plane's server, a superuser could read the control plane's files.
    with_app_table(source_database.url)
    elsewhere = spec_text(url_as(source_database, "postgres", "127.0.0.1"), name="other_db")
    with pytest.raises(RunFailed, match=r"is on the control plane's server, and role postgres is a superuser or a "
                                        r"file-reading role: it can read the server's files"):
        sync(settings, control, elsewhere)

    monkeypatch.setenv("IPAI_SOURCES_IN_CONTROL_PLANE", "allow")
    assert sync(settings, control, text).rows == ITEMS


def test_another_database_on_the_same_server_syncs_where_loopback_is_allowed(control, settings, source_database,
                                                                            monkeypatch):
    with_app_table(source_database.url)
    text = spec_text(url_as(source_database, "postgres", "127.0.0.1"), name="neighbour")
    assert sync(settings, control, text).rows == ITEMS  # dev mode: the control plane runs on this machine

    monkeypatch.setenv("IPAI_EGRESS_ALLOW", "private")  # the operator's list replaces dev mode
    with pytest.raises(RunFailed, match=r"host 127.0.0.1 is this machine \(loopback\); connections reach loopback "
                                        r"addresses only where the operator allows it: "
                                        r"IPAI_EGRESS_ALLOW=127.0.0.1/32 \(or =loopback\)") as failed:
        sync(settings, control, text)
    assert run_of(control, failed.value)[2:] == (0, 0)
    monkeypatch.setenv("IPAI_EGRESS_ALLOW", "private,loopback")
    assert sync(settings, control, text).rows == ITEMS


def test_a_read_task_checks_the_server_it_reached_on_its_own(control):
    """A reader opens its own connection (in a Ray task, on a resumed extraction without planning): it refuses
    the control plane before reading, whatever planning saw."""
    url = url_as(control, "postgres", "localhost")
    s = DatabaseStream("cp", url, TableSpec(table="app.items"), partition_rows=1_000, lookback_s=0)
    options = {"egress": EgressPolicy(loopback=True), "control_plane": control_plane(control, {})}
    reader = s.open(ReadContext(run_id="r", instance_id="i", options=options))
    with pytest.raises(ConfigError, match=r"is the control-plane database, and role postgres is a superuser"):
        list(reader.read(Partition("items", (("key", "id"), ("from", 1), ("to", ITEMS + 1)))))


def test_the_control_planes_identity_is_read_by_a_worker_too(control):
    """Workers connect as ipai_worker, which may not read the tenant table: the tenants are counted from what it
    may read, and the server is the same one."""
    worker = control.with_session({})
    worker.url = url_as(control, "ipai_worker", "127.0.0.1")
    owner, seen_by_worker = control_plane(control, {}), control_plane(worker, {})
    assert seen_by_worker.database == owner.database and seen_by_worker.tenants == owner.tenants == 1
    assert seen_by_worker.same_server(owner.system_identifier, owner.started_at)
