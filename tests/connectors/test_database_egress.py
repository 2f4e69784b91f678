"""Where a database source may connect (issue 15): the egress policy (engine/core/egress.py) on its own, and a
source the policy refuses, refused before any connection is attempted.

No test sends traffic beyond loopback: a host name resolves through a stub resolver that records what it was
asked, and every driver's connect is replaced by one that records the attempt and fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from connectors.database import DatabaseStream, TableSpec
from engine.controlplane.settings import Settings
from engine.core.egress import EgressPolicy, EgressRefused, check_host, check_path
from engine.core.errors import ConfigError
from engine.core.protocol import Partition, PlanContext, ReadContext
from engine.run.sources import egress_policy
from tests.support.egress import StubResolver


def policy(allow: str = "", *, local: bool = False, resolve: StubResolver | None = None) -> EgressPolicy:
    env = {"IPAI_EGRESS_ALLOW": allow} if allow else {}
    p = EgressPolicy.from_environment(env, local=local)
    return p if resolve is None else replace(p, resolve=resolve)


@pytest.mark.parametrize("address", ["169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.10.1",
                                     "fe80::1", "::ffff:169.254.169.254"])
def test_metadata_and_link_local_addresses_are_refused_whatever_the_operator_allows(address):
    everything = policy("loopback, private, 169.254.0.0/16, fd00::/8, fe80::/10, 100.64.0.0/10", local=True)
    with pytest.raises(EgressRefused, match=r"refused whatever the settings say") as refused:
        check_host(address, everything, what="source database host")
    assert str(refused.value).startswith(f"source database host {address} is ")


@pytest.mark.parametrize("address, allow, local, allowed", [
    ("127.0.0.1", "", False, False),
    ("127.0.0.1", "", True, True),                 # dev mode: the control plane runs on this machine
    ("127.0.0.1", "private", True, False),         # the operator's list replaces dev mode
    ("::1", "loopback", False, True),
    ("10.1.2.3", "", True, False),
    ("10.1.2.3", "private", False, True),
    ("10.1.2.3", "10.1.0.0/16", False, True),
    ("10.9.2.3", "10.1.0.0/16", False, False),
    ("172.20.0.5", "", False, False),
    ("192.168.1.7", "192.168.1.7", False, True),
    ("100.64.3.3", "", False, False),
    ("fd12::5", "", False, False),
    ("93.184.216.34", "", False, True),            # public
])
def test_loopback_and_private_addresses_need_the_operators_leave(address, allow, local, allowed):
    p = policy(allow, local=local)
    if allowed:
        assert check_host(address, p) == (address,)
        return
    with pytest.raises(EgressRefused) as refused:
        check_host(address, p, what="source database host")
    message = str(refused.value)
    kind = "loopback" if address in ("127.0.0.1", "::1") else "private"
    assert f"source database host {address} is " in message and f"IPAI_EGRESS_ALLOW={address}/" in message
    assert f"(or ={kind})" in message


def test_a_unix_socket_is_loopback():
    with pytest.raises(EgressRefused, match=r"/var/run/postgresql is a Unix socket on this machine \(loopback\); .*"
                                            r"IPAI_EGRESS_ALLOW=loopback"):
        check_host("/var/run/postgresql", policy("private"))
    assert check_host("/var/run/postgresql", policy("loopback")) == ()


def test_every_address_a_name_resolves_to_is_checked_and_returned():
    resolve = StubResolver({"mixed.test": ["93.184.216.34", "10.0.0.8"], "public.test": ["93.184.216.34", "2606::1"]})
    with pytest.raises(EgressRefused, match=r"^host mixed.test resolves to 10.0.0.8, a private address; .*"
                                            r"IPAI_EGRESS_ALLOW=10.0.0.8/32 \(or =private\)"):
        check_host("mixed.test", policy(resolve=resolve))
    assert check_host("public.test", policy(resolve=resolve)) == ("93.184.216.34", "2606::1")
    with pytest.raises(ConfigError, match=r"host nowhere.test cannot be resolved"):
        check_host("nowhere.test", policy(resolve=resolve))


def test_an_operator_may_list_internal_host_names_but_never_for_metadata():
    resolve = StubResolver({"db.internal": ["10.1.2.3"], "pg.corp.example": ["10.7.0.9"],
                            "sneaky.corp.example": ["169.254.169.254"]})
    p = policy("db.internal, .corp.example", resolve=resolve)
    assert check_host("db.internal", p) == ("10.1.2.3",)
    assert check_host("pg.corp.example", p) == ("10.7.0.9",)
    with pytest.raises(EgressRefused, match=r"resolves to 169.254.169.254, a cloud metadata address"):
        check_host("sneaky.corp.example", p)


@pytest.mark.parametrize("database_url, dev", [
    (None, True),                                                   # the embedded PostgreSQL
    ("postgresql://ipai@127.0.0.1:5432/ipai", True),
    ("postgresql://ipai@localhost/ipai", True),
    ("postgresql://ipai@/ipai?host=/var/run/postgresql", True),
    ("postgresql://ipai@db.example.com/ipai", False),
    ("postgresql://ipai@10.0.0.5/ipai", False),
])
def test_a_control_plane_on_this_machine_is_dev_mode_until_the_operator_sets_a_list(tmp_path, database_url, dev):
    settings = Settings(home=tmp_path, database_url=database_url, lakehouse_uri=str(tmp_path), ray_address=None)
    assert egress_policy(settings, {}).loopback is dev
    assert egress_policy(settings, {"IPAI_DEV_MODE": "1"}).loopback
    assert not egress_policy(settings, {"IPAI_EGRESS_ALLOW": "private"}).loopback
    assert egress_policy(settings, {"IPAI_EGRESS_ALLOW": "private,loopback"}).loopback


def test_sqlite_files_are_confined_to_the_allowed_folders(tmp_path, monkeypatch):
    allowed, elsewhere = tmp_path / "allowed", tmp_path / "elsewhere"
    allowed.mkdir()
    elsewhere.mkdir()
    (elsewhere / "secret.db").write_bytes(b"")
    (allowed / "shop.db").write_bytes(b"")
    (allowed / "link.db").symlink_to(elsewhere / "secret.db")
    p = EgressPolicy.from_environment({"IPAI_SQLITE_ROOTS": f"{allowed}{os.pathsep}{tmp_path / 'other'}"})
    assert check_path(allowed / "shop.db", p) == (allowed / "shop.db").resolve()
    for sneaky in (allowed / "link.db", allowed / ".." / "elsewhere" / "secret.db", Path("/etc/passwd")):
        with pytest.raises(EgressRefused, match=r"is outside the folders database sources may read .*IPAI_SQLITE_ROOTS"):
            check_path(sneaky, p)
    monkeypatch.chdir(elsewhere)
    default = EgressPolicy.from_environment({}, home=allowed)
    assert set(default.sqlite_roots) == {str(elsewhere.resolve()), str(allowed.resolve())}, "the folder and the home"


# -- the database source: refused before connecting -------------------------------------------------------------


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every driver's connect, replaced by one that records the attempt and fails the read."""
    import adbc_driver_postgresql.dbapi
    import adbc_driver_sqlite.dbapi
    import pymysql

    attempts: list[str] = []

    def recorder(name: str) -> Any:
        def connect(*args: Any, **kwargs: Any) -> Any:
            attempts.append(name)
            raise RuntimeError(f"{name}: a connection was attempted")
        return connect

    for module, name in ((adbc_driver_postgresql.dbapi, "adbc postgresql"), (adbc_driver_sqlite.dbapi, "adbc sqlite"),
                         (psycopg, "psycopg"), (pymysql, "pymysql")):
        monkeypatch.setattr(module, "connect", recorder(name))
    yield attempts


def stream(url: str, table: str = "app.items") -> DatabaseStream:
    return DatabaseStream("src", url, TableSpec(table=table), partition_rows=1_000, lookback_s=0)


def plan_context(p: EgressPolicy, mode: str = "full") -> PlanContext:
    return PlanContext(sync_mode=mode, cursor=None, run_started_at=datetime.now(UTC), options={"egress": p})


@pytest.mark.parametrize("url, address, reason", [
    ("postgresql://reader@metadata.test:5432/app", "169.254.169.254", "a cloud metadata address"),
    ("postgresql://reader@warehouse.test/app", "10.20.30.40", "a private address"),
    ("mysql://reader@metadata.test/app", "169.254.169.254", "a cloud metadata address"),
    ("mysql://reader@warehouse.test:3306/app", "10.20.30.40", "a private address"),
])
def test_a_source_at_a_metadata_or_private_address_is_refused_before_connecting(connections, url, address, reason):
    host = url.split("@")[1].split("/")[0].split(":")[0]
    resolve = StubResolver({host: [address]})
    dev = policy(local=True, resolve=resolve)  # loopback allowed, as on a developer's machine: still refused
    with pytest.raises(EgressRefused) as refused:
        stream(url).plan(plan_context(dev))
    assert str(refused.value).startswith(f"source database {url}: host {host} resolves to {address}, {reason}")
    assert "IPAI_EGRESS_ALLOW" in str(refused.value) or "metadata" in reason
    assert resolve.asked == [host] and connections == [], "resolved, then refused before any connection"

    with pytest.raises(EgressRefused):  # a read task checks again, on its own
        list(stream(url).open(ReadContext(run_id="r", instance_id="i", options={"egress": dev})).read(
            Partition("items", (("key", "id"), ("from", 1), ("to", 10)))))
    assert connections == []


def test_a_literal_metadata_address_and_a_cdc_plan_are_refused_before_connecting(connections):
    resolve = StubResolver({})
    with pytest.raises(EgressRefused, match=r"^source database postgresql://reader@169.254.169.254/app: host "
                                            r"169.254.169.254 is a cloud metadata address"):
        stream("postgresql://reader@169.254.169.254/app").plan(plan_context(policy(local=True, resolve=resolve)))
    resolve = StubResolver({"warehouse.test": ["10.20.30.40"]})
    with pytest.raises(EgressRefused, match=r"warehouse.test resolves to 10.20.30.40, a private address"):
        stream("postgresql://reader@warehouse.test/app").plan(plan_context(policy(resolve=resolve), mode="cdc"))
    assert connections == []


def test_a_sqlite_file_outside_the_allowed_folders_is_refused_before_it_is_opened(connections, tmp_path):
    outside = tmp_path / "elsewhere.db"
    outside.write_bytes(b"")
    p = EgressPolicy.from_environment({"IPAI_SQLITE_ROOTS": str(tmp_path / "allowed")})
    with pytest.raises(EgressRefused, match=rf"SQLite file {outside} is outside the folders"):
        stream(f"sqlite:///{outside}", "items").plan(plan_context(p))
    assert connections == []


def test_a_url_naming_a_file_or_service_of_the_worker_is_refused(connections):
    for param in ("passfile=/root/.pgpass", "service=controlplane", "sslkey=/etc/ipai/key.pem", "hostaddr=10.0.0.1"):
        with pytest.raises(ConfigError, match=rf"`{param.split('=')[0]}=` would use a file, service or "
                                                           "address of the worker host"):
            stream(f"postgresql://reader@db.example.com/app?{param}").plan(plan_context(policy()))
    assert connections == []


# -- PG* variables: a real source on the test server ---------------------------------------------------------


@pytest.mark.parametrize("via", ["tcp", "socket"])
def test_pg_environment_variables_do_not_change_where_or_as_whom_a_source_connects(source_database, monkeypatch,
                                                                                   tmp_path, via):
    url = source_database.url
    if via == "socket":
        parts = urlsplit(url)
        if parts.hostname != "127.0.0.1" or not Path("/var/run/postgresql").is_dir():
            pytest.skip("the test server has no socket in /var/run/postgresql")
        url = f"postgresql://{parts.username}@{parts.path}?host=/var/run/postgresql&port={parts.port or 5432}"
    with psycopg.connect(source_database.url, autocommit=True) as conn:
        conn.execute("create schema app; create table app.items (id int primary key, name text)")
        conn.execute("insert into app.items select g, 'item ' || g from generate_series(1, 50) g")
    pgpass = tmp_path / "pgpass"
    pgpass.write_text("*:*:*:*:wrong\n")
    pgpass.chmod(0o600)
    # Each of these, were libpq to take it, would send the connection elsewhere (PGHOSTADDR even turns a socket
    # into TCP), as someone else, or without the read-only session (the server has no TLS: sslmode=require fails).
    for name, value in {"PGHOST": "/nonexistent", "PGHOSTADDR": "127.0.0.2", "PGPORT": "1", "PGUSER": "nobody",
                        "PGPASSWORD": "wrong", "PGDATABASE": "nowhere", "PGPASSFILE": str(pgpass),
                        "PGSSLMODE": "require", "PGOPTIONS": "-c default_transaction_read_only=off"}.items():
        monkeypatch.setenv(name, value)
    query = ("select id, current_user::text as who, current_database()::text as db,"
             " current_setting('default_transaction_read_only') as read_only from app.items")
    s = DatabaseStream("src", url, TableSpec(name="who", query=query, primary_key=("id",),
                                                             partition_on="id"), partition_rows=1_000, lookback_s=0)
    ctx = plan_context(policy(local=True))
    plan = s.plan(ctx)
    reader = s.open(ReadContext(run_id="r", instance_id="i", options=ctx.options))
    rows = [r for p in plan.partitions for b in reader.read(p) for r in b.to_pylist()]
    assert sorted(r["id"] for r in rows) == list(range(1, 51))
    expected_db = urlsplit(source_database.url).path.lstrip("/")
    assert {(r["who"], r["db"], r["read_only"]) for r in rows} == {("postgres", expected_db, "on")}


def test_a_postgres_connection_across_a_network_requires_tls_unless_the_url_chooses():
    """RELIABILITY 20: no plain-text Postgres beyond this machine unless the URL says so."""
    from psycopg.conninfo import conninfo_to_dict

    from connectors.database.dialects.postgres import conninfo
    from engine.core.urls import with_tls

    resolve = StubResolver({"warehouse.test": ["93.184.216.34"]})
    remote = conninfo_to_dict(conninfo("postgresql://reader@warehouse.test/app", policy(resolve=resolve)))
    assert (remote["hostaddr"], remote["sslmode"]) == ("93.184.216.34", "require")
    chosen = conninfo("postgresql://reader@warehouse.test/app?sslmode=verify-full", policy(resolve=resolve))
    assert conninfo_to_dict(chosen)["sslmode"] == "verify-full"
    here = conninfo_to_dict(conninfo("postgresql://reader@127.0.0.1/app", policy(local=True)))
    assert here["sslmode"] == "prefer"
    assert with_tls("postgresql://u@db.example.com:5432/x") == "postgresql://u@db.example.com:5432/x?sslmode=require"
    assert with_tls("postgresql://u@db.example.com/x?connect_timeout=5").endswith("?connect_timeout=5&sslmode=require")
    assert with_tls("host=db.example.com dbname=x") == "host=db.example.com dbname=x sslmode=require"
    for unchanged in ("postgresql://u@db.example.com/x?sslmode=disable", "postgresql://u@127.0.0.1/x",
                      "postgresql://u@localhost/x", "postgresql:///x?host=/var/run/postgresql"):
        assert with_tls(unchanged) == unchanged
