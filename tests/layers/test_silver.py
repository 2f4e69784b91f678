"""Silver: one row per key, the latest version, soft deletes, schema evolution and quarantine, in real
Delta tables and real Postgres; merges fed by real syncs (sample source, local Ray) and by chunks."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from connectors.specload import parse_spec
from layers.addressing import Address
from layers.silver.merge import SilverMerger
from layers.silver.target import SilverTarget
from tests.support.syncing import sync
from tests.support.truth import (
    address, bronze_postgres, bronze_schema, bronze_table, silver_table, silver_uri, source_rows,
)

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)

SHOP = """
name: {name}
source_type: sample
layers: [{layers}]
source:
  seed: 5
  days: 30
  today: {today}
  customers: 2000
  orders: 8000
  partition_rows: 4000
tuning:
  commit_rows: 10000
"""


def shop_sync(settings: Any, database: Any, *, today: int, layers: str = "bronze, silver", name: str = "shop",
              **options: Any) -> Any:
    text = SHOP.format(today=today, layers=layers, name=name)
    return sync(settings, database, text, **options)


def pg_rows(url: str, table: str, columns: list[str], key: str = "id") -> list[tuple]:
    """Silver's rows (`table` is `<schema>.<table>`) in Postgres through psycopg (numeric as Decimal, as the
    source has it), sorted by key."""
    names = ", ".join(f'"{c}"' for c in columns)
    schema, _, name = table.partition(".")
    with psycopg.connect(url) as conn:
        return conn.execute(f'select {names} from "{schema}"."{name}" order by "{key}"').fetchall()


def data_rows(table: pa.Table, columns: list[str], key: str = "id") -> list[tuple]:
    """The table's rows as tuples of `columns`, sorted by key, for comparing with the source."""
    rows = table.select(columns).to_pylist()
    return sorted((tuple(r[c] for c in columns) for r in rows), key=lambda r: r[columns.index(key)])


@pytest.mark.usefixtures("ray_cluster")
def test_incremental_runs_leave_silver_equal_to_the_source(settings, database):
    # Day 20 with bronze only, then silver turned on at day 25: the second run merges both extractions
    # (bronze history included), and silver equals the source as it is on day 25, one row per key.
    assert shop_sync(settings, database, today=20, layers="bronze").status == "succeeded"
    result = shop_sync(settings, database, today=25)
    assert result.status == "succeeded"
    spec = parse_spec(SHOP.format(today=25, layers="bronze, silver", name="shop"))
    for stream, key in (("customers", "id"), ("orders", "id")):
        truth = source_rows(spec, stream)
        columns = truth.column_names
        expected = data_rows(truth, columns, key)
        delta = DeltaTable(silver_uri(spec, stream, settings.lakehouse_uri)).to_pyarrow_table()
        assert data_rows(delta, columns, key) == expected
        assert pg_rows(database.url, silver_table(spec, stream), columns, key) == expected
        assert not any(delta.column("_ipai_deleted").to_pylist())
        assert pg_rows(database.url, silver_table(spec, stream), ["_ipai_deleted"], "_ipai_deleted")[-1] == (False,)
        assert bronze_postgres(database.url, bronze_table(spec, stream)).num_rows > truth.num_rows  # changed twice
    with database.connect() as conn:
        unmerged = conn.execute("select count(*) from connector_extractions where silver_merged_at is null").fetchone()
        events = [r[0] for r in conn.execute("select event from connector_run_logs where run_id = %s",
                                             (result.run_id,))]
    assert unmerged == (0,)
    assert events.count("silver.merged") == 3

    # A third run finds nothing new to read and nothing to merge: silver stays as it is.
    every = ["id", "_ipai_run_id", "_ipai_extracted_at", "_ipai_row_hash"]
    before = pg_rows(database.url, silver_table(spec, "orders"), every)
    assert shop_sync(settings, database, today=25).status == "succeeded"
    assert pg_rows(database.url, silver_table(spec, "orders"), every) == before


# -- merges of chunks -------------------------------------------------------------------------------


LAB = Address("local", "dev", "lab")
"""The instance whose streams the merges of chunks below write: `silver_dev.lab_<stream>`, quarantine
`bronze_dev.quarantine_lab_<stream>`."""


def target_in(tmp: Path, database: Any, stream: str, *, cursor: str | None = "updated_at",
              flatten: tuple[tuple[str, str, str], ...] = ()) -> SilverTarget:
    """Where a run merges `stream` of `LAB`, with `tmp` as the lakehouse."""
    table, quarantine = LAB.silver_table(stream), LAB.quarantine_table(stream)
    return SilverTarget(table=table, key=("id",), cursor=cursor, bronze_table=LAB.bronze_table(stream),
                        delta_uri=LAB.delta_uri(str(tmp), "silver", table), quarantine_table=quarantine,
                        quarantine_delta_uri=LAB.delta_uri(str(tmp), "bronze", quarantine),
                        postgres_url=database.url, postgres_schema=LAB.schema("silver"),
                        bronze_postgres_schema=LAB.schema("bronze"), flatten=flatten)


def held_in_postgres(database: Any, target: SilverTarget) -> list[tuple]:
    """(id, column, value, reason) of the rows the Postgres quarantine beside `target`'s bronze holds."""
    with psycopg.connect(database.url) as conn:
        return conn.execute(f'select id, _ipai_column, _ipai_value, _ipai_reason'
                            f' from "{target.bronze_postgres_schema}"."{target.quarantine_table}"'
                            " order by _ipai_column").fetchall()


def chunk(rows: list[dict[str, Any]], *, extracted_at: datetime = T0, schema: pa.Schema | None = None) -> pa.Table:
    table = pa.Table.from_pylist(rows, schema=schema)
    n = table.num_rows
    table = table.append_column("_ipai_run_id", pa.array([str(uuid.UUID(int=1))] * n))
    table = table.append_column("_ipai_extraction_id", pa.array([str(uuid.UUID(int=2))] * n))
    table = table.append_column("_ipai_partition", pa.array([0] * n, pa.int32()))
    return table.append_column("_ipai_extracted_at", pa.array([extracted_at] * n, pa.timestamp("us", tz="UTC")))


def silver_both(target: SilverTarget, database: Any, columns: list[str]) -> tuple[list[tuple], list[tuple]]:
    delta = DeltaTable(str(target.delta_uri)).to_pyarrow_table()
    return data_rows(delta, columns), pg_rows(database.url, f"{target.postgres_schema}.{target.table}", columns)


ROW = st.fixed_dictionaries({
    "id": st.integers(1, 8),
    "updated_at": st.integers(0, 4).map(lambda d: T0 + timedelta(days=d)),
    "name": st.sampled_from(["a", "b", "c", None]),
    "amount": st.integers(-5, 5),
})
BATCHES = st.lists(st.lists(ROW, min_size=1, max_size=12), min_size=1, max_size=4)


@hsettings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=BATCHES, seed=st.integers(0, 1000))
def test_the_same_batches_delivered_1_2_and_5_times_shuffled_give_the_same_silver(tmp_path, database, batches,
                                                                                 seed):
    columns = ["id", "updated_at", "name", "amount", "_ipai_deleted"]
    schema = pa.schema([("id", pa.int64()), ("updated_at", pa.timestamp("us", tz="UTC")), ("name", pa.string()),
                        ("amount", pa.int64())])
    results = []
    for copies in (1, 2, 5):
        target = target_in(tmp_path, database, f"prop_{uuid.uuid4().hex[:8]}")
        deliveries = [b for b in batches for _ in range(copies)]
        random.Random(seed + copies).shuffle(deliveries)
        with SilverMerger(target, run_id=str(uuid.UUID(int=1))) as merger:
            for rows in deliveries:
                merger.merge(chunk(random.Random(seed).sample(rows, len(rows)), schema=schema), extraction_id="e")
        delta, pg = silver_both(target, database, columns)
        assert delta == pg
        results.append(delta)
    assert results[0] == results[1] == results[2]
    # Each key holds its greatest updated_at, and a value one of its rows with that updated_at had.
    every = [r for b in batches for r in b]
    assert [r[0] for r in results[0]] == sorted({r["id"] for r in every})
    for id_, updated_at, name, amount, deleted in results[0]:
        newest = max(r["updated_at"] for r in every if r["id"] == id_)
        assert updated_at == newest and not deleted
        assert {"name": name, "amount": amount} in [{"name": r["name"], "amount": r["amount"]} for r in every
                                                   if r["id"] == id_ and r["updated_at"] == newest]


def test_schema_drift_adds_widens_and_quarantines_without_touching_silver(tmp_path, database):
    target = target_in(tmp_path, database, "drift")
    with SilverMerger(target, run_id=str(uuid.UUID(int=1))) as merger:
        merger.merge(chunk([{"id": 1, "updated_at": T0, "n": 1}, {"id": 2, "updated_at": T0, "n": 2}]),
                     extraction_id="e1")
        # A new column and a widened type (int -> double): both applied in place.
        merger.merge(chunk([{"id": 2, "updated_at": T0 + timedelta(days=1), "n": 2.5, "tag": "x"}]),
                     extraction_id="e2")
        # Text where silver has numbers: the row that does not fit is set aside, the other goes in.
        merger.merge(chunk([{"id": 1, "updated_at": T0 + timedelta(days=2), "n": "n/a", "tag": "y"},
                            {"id": 3, "updated_at": T0 + timedelta(days=2), "n": "7", "tag": "z"}]),
                     extraction_id="e3")
        # A row with no key cannot be merged.
        merger.merge(chunk([{"id": None, "updated_at": T0, "n": 4.0, "tag": "k"}]), extraction_id="e4")
    assert merger.result.quarantined == 2
    assert any("widen n" in c for c in merger.result.changes) and any("add tag" in c for c in merger.result.changes)
    columns = ["id", "n", "tag"]
    delta, pg = silver_both(target, database, columns)
    assert delta == pg == [(1, 1.0, None), (2, 2.5, "x"), (3, 7.0, "z")]
    assert DeltaTable(str(target.delta_uri)).schema().to_arrow().field("n").type == pa.float64()
    with psycopg.connect(database.url) as conn:
        kind = conn.execute("select data_type from information_schema.columns where table_schema = %s"
                            " and table_name = %s and column_name = 'n'",
                            (target.postgres_schema, target.table)).fetchone()
    held = held_in_postgres(database, target)
    assert kind == ("double precision",)
    assert held[0][1:3] == ("id", None) and "primary key is null" in held[0][3]
    assert held[1][:3] == ("1", "n", "n/a") and "does not fit silver's type double" in held[1][3]
    quarantined = DeltaTable(str(target.quarantine_delta_uri)).to_pyarrow_table()
    assert sorted(quarantined.column("_ipai_value").to_pylist(), key=str) == sorted(["n/a", None], key=str)


def test_change_data_capture_rows_become_soft_deletes_and_keep_unsent_columns(tmp_path, database):
    target = target_in(tmp_path, database, "cdc", cursor=None)
    schema = pa.schema([("id", pa.int64()), ("body", pa.string()), ("n", pa.int64()), ("_ipai_op", pa.string()),
                        ("_ipai_lsn", pa.int64()), ("_ipai_seq", pa.int32()), ("_ipai_unchanged", pa.string())])

    def change(id_: int, op: str, lsn: int, seq: int, body: str | None = None, n: int | None = None,
               unchanged: str | None = None) -> dict[str, Any]:
        return {"id": id_, "body": body, "n": n, "_ipai_op": op, "_ipai_lsn": lsn, "_ipai_seq": seq,
                "_ipai_unchanged": unchanged}

    with SilverMerger(target, run_id=str(uuid.UUID(int=1))) as merger:
        merger.merge(chunk([change(1, "r", 100, -1, "long text 1", 1), change(2, "r", 100, -1, "long text 2", 2),
                            change(3, "r", 100, -1, "long text 3", 3)], schema=schema), extraction_id="snapshot")
        # Out of order and repeated: a delete, an update that did not send `body` (TOAST), and, in the same
        # chunk, an update of key 3 followed by one that did not send body either.
        changes = [change(2, "d", 120, 0), change(1, "u", 110, 0, None, 10, "body"),
                   change(3, "u", 130, 0, "new text 3", 30), change(3, "u", 140, 0, None, 31, "body"),
                   change(2, "d", 120, 0)]
        merger.merge(chunk(changes, schema=schema), extraction_id="changes")
        merger.merge(chunk(changes[::-1], schema=schema), extraction_id="changes")
    columns = ["id", "body", "n", "_ipai_deleted"]
    delta, pg = silver_both(target, database, columns)
    assert delta == pg == [(1, "long text 1", 10, False), (2, "long text 2", 2, True), (3, "new text 3", 31, False)]
    assert "_ipai_unchanged" not in DeltaTable(str(target.delta_uri)).schema().to_arrow().names
    assert pc.max(DeltaTable(str(target.delta_uri)).to_pyarrow_table().column("_ipai_lsn")).as_py() == 140


@pytest.mark.usefixtures("ray_cluster")
def test_a_full_sync_soft_deletes_the_keys_the_source_no_longer_has(settings, database, source_database):
    with psycopg.connect(source_database.url, autocommit=True) as conn:
        conn.execute("create schema src; create table src.items (id bigint primary key, name text, updated_at timestamptz)")
        conn.execute("insert into src.items select g, 'item ' || g, now() from generate_series(1, 3000) g")
    text = (f"name: inv\nsource_type: database\nsync_mode: full\nlayers: [bronze, silver]\n"
            f"source:\n  url: {source_database.url}\n  partition_rows: 1000\n  tables:\n    - {{table: src.items}}\n")
    assert sync(settings, database, text).status == "succeeded"
    with psycopg.connect(source_database.url, autocommit=True) as conn:
        conn.execute("delete from src.items where id between 101 and 150")
        conn.execute("update src.items set name = 'renamed' where id = 7")
    second = sync(settings, database, text)
    assert second.status == "succeeded"
    spec = parse_spec(text)
    delta = DeltaTable(silver_uri(spec, "items", settings.lakehouse_uri)).to_pyarrow_table()
    for rows in (data_rows(delta, ["id", "name", "_ipai_deleted"]),
                 pg_rows(database.url, silver_table(spec, "items"), ["id", "name", "_ipai_deleted"])):
        assert len(rows) == 3000
        assert [r[0] for r in rows if r[2]] == list(range(101, 151)), "the deleted keys, soft-deleted"
        assert rows[6] == (7, "renamed", False) and rows[100] == (101, "item 101", True)  # last known values kept
    with database.connect() as conn:
        said = conn.execute("select message from connector_run_logs where run_id = %s and event = 'silver.merged'",
                            (second.run_id,)).fetchone()
    assert said and "50 keys the source no longer has marked deleted" in said[0]
    with database.connect() as conn:
        metrics = conn.execute("select metrics from connector_runs where id = %s", (second.run_id,)).fetchone()[0]
    assert metrics == {"items": {"silver_rows": 2950, "silver_deleted": 50, "silver_quarantined": 0}}


def test_declared_nested_fields_get_columns_and_a_value_that_does_not_parse_is_set_aside(tmp_path, database):
    target = target_in(tmp_path, database, "nested",
                       flatten=(("user_login", "user.login", "string"), ("user_id", "user.id", "int64"),
                                ("seen", "user.seen_at", "timestamp")))
    rows = [{"id": 1, "updated_at": T0, "user": '{"login": "ada", "id": 7, "seen_at": "2026-11-02T10:00:00Z"}'},
            {"id": 2, "updated_at": T0, "user": '{"login": "bob"}'},
            {"id": 3, "updated_at": T0, "user": '{"login": "eve", "id": "x7"}'},
            {"id": 4, "updated_at": T0, "user": None}]
    with SilverMerger(target, run_id=str(uuid.UUID(int=1))) as merger:
        merger.merge(chunk(rows), extraction_id="e")
    assert merger.result.quarantined == 1
    seen = datetime(2026, 11, 2, 10, tzinfo=timezone.utc)
    expected = [(1, "ada", 7, seen), (2, "bob", None, None), (4, None, None, None)]
    delta, pg = silver_both(target, database, ["id", "user_login", "user_id", "seen"])
    assert delta == pg == expected
    assert held_in_postgres(database, target) == [
        ("3", "user_id", "x7", "flatten user_id: user.id does not parse as int64")]


@pytest.mark.usefixtures("ray_cluster")
def test_incremental_runs_with_late_updates_in_the_lookback_give_the_silver_of_a_full_refresh(settings, database,
                                                                                             source_database):
    # Rows committed late with an updated_at behind the stored cursor (a long transaction) are read again by
    # the lookback window; after three runs silver equals that of one full read of the final table.
    base = datetime(2026, 11, 30, 12, tzinfo=timezone.utc)
    with psycopg.connect(source_database.url, autocommit=True) as conn:
        conn.execute("create schema shop; create table shop.orders (id bigint primary key, status text,"
                     " amount numeric(10, 2), updated_at timestamptz not null); create index on shop.orders (updated_at)")
        conn.execute("insert into shop.orders select g, 'placed', g * 1.25, %s + g * interval '1 second'"
                     " from generate_series(1, 2000) g", (base,))

    def spec(name: str, mode: str) -> str:
        return (f"name: {name}\nsource_type: database\nsync_mode: {mode}\nlayers: [bronze, silver]\nsource:\n"
                f"  url: {source_database.url}\n  partition_rows: 1000\n  lookback_s: 600\n"
                "  tables:\n    - {table: shop.orders, cursor: updated_at}\n")

    incremental = spec("inc", "incremental")
    for step in range(3):
        assert sync(settings, database, incremental).status == "succeeded"
        with psycopg.connect(source_database.url, autocommit=True) as conn:
            top = conn.execute("select max(updated_at) from shop.orders").fetchone()[0]
            # New rows past the cursor, and late updates 5 minutes behind it (inside the 10-minute lookback).
            conn.execute("insert into shop.orders select g, 'placed', 1, %s + g * interval '1 second'"
                         " from generate_series(%s::int, %s::int) g", (top, 2001 + step * 100, 2100 + step * 100))
            conn.execute("update shop.orders set status = %s, updated_at = %s - interval '5 minutes'"
                         " where id %% 97 = %s", (f"late {step}", top, step))
    assert sync(settings, database, incremental).status == "succeeded"
    full = spec("fullcopy", "full")
    assert sync(settings, database, full).status == "succeeded"
    columns = ["id", "status", "amount", "updated_at", "_ipai_deleted"]
    inc_spec, full_spec = parse_spec(incremental), parse_spec(full)
    inc_table, full_table = silver_table(inc_spec, "orders"), silver_table(full_spec, "orders")
    assert pg_rows(database.url, inc_table, columns) == pg_rows(database.url, full_table, columns)
    with psycopg.connect(source_database.url) as conn:
        source = conn.execute("select id, status, amount, updated_at, false from shop.orders order by id").fetchall()
    assert pg_rows(database.url, inc_table, columns) == source
    inc = DeltaTable(silver_uri(inc_spec, "orders", settings.lakehouse_uri)).to_pyarrow_table()
    assert data_rows(inc, columns) == [tuple(r) for r in source]


@pytest.mark.usefixtures("ray_cluster")
def test_a_new_partition_layout_is_refused_until_silver_is_rebuilt_from_bronze(settings, database):
    from typer.testing import CliRunner

    from engine.cli.main import app
    from engine.core.errors import RunFailed

    assert shop_sync(settings, database, today=20).status == "succeeded"
    text = SHOP.format(today=20, layers="bronze, silver", name="shop") + (
        "streams:\n  - {name: customers, silver: {partition_by: [country]}}\n  - {name: orders}\n")
    with pytest.raises(RunFailed) as refused:
        sync(settings, database, text)
    assert "partitioned by nothing" in str(refused.value) and "ipai silver rebuild" in str(refused.value)
    env = {"IPAI_DATABASE_URL": database.url, "IPAI_LAKEHOUSE_URI": settings.lakehouse_uri,
           "IPAI_HOME": str(settings.home)}
    rebuilt = CliRunner().invoke(app, ["silver", "rebuild", "shop", "--stream", "customers", "--yes"], env=env)
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "customers: silver shop_customers dropped" in rebuilt.output
    assert sync(settings, database, text).status == "succeeded"
    spec = parse_spec(text)
    table = DeltaTable(silver_uri(spec, "customers", settings.lakehouse_uri))
    assert table.metadata().partition_columns == ["country"]
    truth = source_rows(spec, "customers")
    columns = truth.column_names
    assert data_rows(table.to_pyarrow_table(), columns) == data_rows(truth, columns)
    assert pg_rows(database.url, silver_table(spec, "customers"), columns) == data_rows(truth, columns)


@pytest.mark.usefixtures("ray_cluster")
def test_a_source_column_changing_type_mid_life_quarantines_only_the_rows_that_do_not_fit(settings, database,
                                                                                         source_database):
    with psycopg.connect(source_database.url, autocommit=True) as conn:
        conn.execute("create schema drift; create table drift.items (id bigint primary key, n bigint,"
                     " updated_at timestamptz not null)")
        conn.execute("insert into drift.items select g, g, %s from generate_series(1, 1500) g", (T0,))
    text = (f"name: dr\nsource_type: database\nsync_mode: incremental\nlayers: [bronze, silver]\nsource:\n"
            f"  url: {source_database.url}\n  partition_rows: 1000\n  tables:\n"
            "    - {table: drift.items, cursor: updated_at}\n")
    assert sync(settings, database, text).status == "succeeded"
    with psycopg.connect(source_database.url, autocommit=True) as conn:  # the source's column becomes text
        conn.execute("alter table drift.items alter column n type text")
        conn.execute("update drift.items set n = 'n/a', updated_at = %s where id = 5", (T0 + timedelta(days=1),))
        conn.execute("update drift.items set n = '70', updated_at = %s where id = 7", (T0 + timedelta(days=1),))
    second = sync(settings, database, text)
    assert second.status == "succeeded"
    spec = parse_spec(text)
    quarantine = f'"{bronze_schema(spec)}"."{address(spec).quarantine_table("items")}"'
    with database.connect() as conn:
        logged = conn.execute("select message from connector_run_logs where run_id = %s and event = 'bronze.quarantined'",
                              (second.run_id,)).fetchone()
        held = conn.execute(f"select _ipai_column, _ipai_value, _ipai_row::jsonb->>'id' from {quarantine}").fetchall()
    assert logged and "1 rows did not fit raw_dr_items" in logged[0] and "string does not fit int64" in logged[0]
    assert held == [("n", "n/a", "5")]
    with database.connect() as conn:
        metrics = conn.execute("select metrics from connector_runs where id = %s", (second.run_id,)).fetchone()[0]
    assert metrics["items"]["bronze_quarantined"] == 1 and metrics["items"]["silver_rows"] == 1
    rows = pg_rows(database.url, silver_table(spec, "items"), ["id", "n"])
    assert rows[4] == (5, 5) and rows[6] == (7, 70) and len(rows) == 1500  # silver keeps what it had for id 5
    delta = DeltaTable(silver_uri(spec, "items", settings.lakehouse_uri)).to_pyarrow_table()
    assert data_rows(delta, ["id", "n"]) == rows
