"""The `database` source on PostgreSQL (the test server, or the embedded one): tables read in parallel key
ranges over ADBC into bronze, incremental windows that neither skip nor repeat rows, faithful types, and
errors that name the table, the column or the server (password redacted)."""

from __future__ import annotations

import decimal
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pyarrow as pa
import pytest

from engine.core.errors import RunFailed
from connectors.specload import parse_spec
from tests.support.syncing import sync
from layers.addressing import Address
from tests.support.truth import assert_exactly_once_per_extraction, bronze_delta, bronze_postgres

pytestmark = pytest.mark.usefixtures("ray_cluster")

ORDERS = 30_000


def spec_text(url: str, tables: str, *, mode: str = "incremental", partition_rows: int = 5_000) -> str:
    return (f"name: src\nsource_type: database\nsync_mode: {mode}\nsource:\n  url: {url}\n"
            f"  partition_rows: {partition_rows}\n  tables:\n{tables}")


ORDERS_TABLE = "    - {table: shop.orders, cursor: updated_at}\n"


@pytest.fixture
def shop(source_database: Any) -> Any:
    """Schema `shop` in a source database beside the control plane's: 30,000 orders with an indexed updated_at."""
    with psycopg.connect(source_database.url, autocommit=True) as conn:
        conn.execute("create schema shop; create type shop.status as enum ('placed', 'paid', 'shipped')")
        conn.execute(
            "create table shop.orders (id bigint primary key, updated_at timestamptz not null,"
            " amount numeric(12, 2), status shop.status, meta jsonb, tags text[], ref uuid)")
        conn.execute(
            "insert into shop.orders select g, timestamptz '2026-11-01 00:00:00+00' + g * interval '1 second',"
            " (g %% 997) * 1.25, (array['placed', 'paid', 'shipped'])[1 + g %% 3]::shop.status,"
            " jsonb_build_object('n', g), array['t' || (g %% 5)], gen_random_uuid() from generate_series(1, %s) g",
            (ORDERS,))
        conn.execute("create index on shop.orders (updated_at); analyze shop.orders")
    return source_database


def source(database: Any) -> set[tuple[int, datetime]]:
    with psycopg.connect(database.url) as conn:
        return set(conn.execute("select id, updated_at from shop.orders").fetchall())


SRC = Address("local", "dev", "src")
"""Every spec here is instance `src` in env dev: stream `orders` lands in `bronze_dev.raw_src_orders`."""


def pg_bronze(database: Any, stream: str) -> pa.Table:
    return bronze_postgres(database.url, f"{SRC.schema('bronze')}.{SRC.bronze_table(stream)}")


def delta_bronze(settings: Any, stream: str) -> pa.Table:
    return bronze_delta(SRC.delta_uri(settings.lakehouse_uri, "bronze", SRC.bronze_table(stream)))


def loaded(database: Any) -> pa.Table:
    return pg_bronze(database, "orders")


def test_full_read_in_key_ranges_then_incremental_reads_only_changes_once(shop, settings, database):
    first = sync(settings, database, spec_text(shop.url, ORDERS_TABLE))
    assert first.partitions == 6, "30,000 rows at 5,000 a partition"
    table = loaded(database)
    assert set(zip(table.column("id").to_pylist(), table.column("updated_at").to_pylist())) == source(shop)
    assert_exactly_once_per_extraction(table, ("id",))
    assert delta_bronze(settings, "orders").num_rows == ORDERS
    assert first.tables[0].cursor == "2026-11-01T08:20:00.000000+00:00"  # the max at plan time

    with psycopg.connect(shop.url, autocommit=True) as conn:
        conn.execute("update shop.orders set updated_at = now(), amount = -1 where id % 60 = 0")  # 500 rows
        conn.execute("insert into shop.orders select g, now(), 0, 'placed', null, null, null"
                     " from generate_series(%s::bigint, %s::bigint) g", (ORDERS + 1, ORDERS + 100))
    second = sync(settings, database, spec_text(shop.url, ORDERS_TABLE))
    assert second.rows == 600 and second.partitions == 1, "600 changed rows fit one partition"
    changed = loaded(database).filter(pa.compute.equal(pa.compute.field("_ipai_run_id"), second.run_id))
    assert sorted(changed.column("id").to_pylist()) == sorted(
        [i for i in range(60, ORDERS + 1, 60)] + list(range(ORDERS + 1, ORDERS + 101)))

    third = sync(settings, database, spec_text(shop.url, ORDERS_TABLE))
    assert third.rows == 0, "nothing changed since the fixed upper bound"


def test_types_arrive_faithfully(shop, settings, database):
    sync(settings, database, spec_text(shop.url, ORDERS_TABLE, mode="full"))
    delta = delta_bronze(settings, "orders")
    schema = delta.schema
    assert schema.field("amount").type == pa.decimal128(12, 2)
    assert schema.field("updated_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("status").type == pa.string() and schema.field("ref").type == pa.string()
    assert pa.types.is_list(schema.field("tags").type)
    row = delta.filter(pa.compute.equal(delta.column("id"), 7)).to_pylist()[0]
    assert row["amount"] == decimal.Decimal("8.75")
    assert row["updated_at"] == datetime(2026, 11, 1, 0, 0, 7, tzinfo=timezone.utc)
    assert row["status"] == "paid" and row["meta"] == '{"n": 7}' and row["tags"] == ["t2"]


def test_a_cursor_without_an_index_is_read_with_a_warning_of_its_cost(shop, settings, database):
    with psycopg.connect(shop.url, autocommit=True) as conn:
        conn.execute("drop index shop.orders_updated_at_idx")
    result = sync(settings, database, spec_text(shop.url, ORDERS_TABLE))
    assert result.rows == ORDERS
    with psycopg.connect(database.url) as conn:
        warnings = [r[0] for r in conn.execute("select message from connector_run_logs where level = 'warning'")]
    assert any("shop.orders.updated_at has no index" in w and "30,000 rows" in w for w in warnings), warnings


def test_a_missing_table_or_column_is_named(shop, settings, database):
    with pytest.raises(RunFailed, match=r"table shop.order does not exist .*shop\.orders"):
        sync(settings, database, spec_text(shop.url, "    - {table: shop.order, cursor: updated_at}\n"))
    with pytest.raises(RunFailed, match=r"cursor column 'changed_at' does not exist in shop.orders"):
        sync(settings, database, spec_text(shop.url, "    - {table: shop.orders, cursor: changed_at}\n"))


def test_an_unreachable_database_is_named_without_its_password(shop, settings, database, vault):
    vault.set("src_url", "postgresql://postgres:hunter2secret@127.0.0.1:1/nowhere")
    text = spec_text("{secret: src_url}", ORDERS_TABLE)
    with pytest.raises(RunFailed, match=r"source database postgresql://postgres:\*\*\*@127.0.0.1:1/nowhere") as failed:
        sync(settings, database, text)
    assert "hunter2secret" not in str(failed.value)


def test_a_password_in_the_spec_is_refused(database):
    from engine.core.errors import SpecError

    with pytest.raises(SpecError, match="store the whole URL as a secret"):
        parse_spec(spec_text("postgresql://u:pw@localhost/db", ORDERS_TABLE))


def test_rows_changing_while_an_extraction_is_read_are_neither_skipped_nor_repeated(shop, settings, database, tmp_path):
    from engine.core.faults import DriverCrash, FaultPlan

    text = spec_text(shop.url, ORDERS_TABLE)
    with pytest.raises(DriverCrash):  # the driver dies after its first partition is recorded
        sync(settings, database, text, lease_seconds=1,
             faults=FaultPlan(points=("driver.after_checkpoint",), marker_dir=str(tmp_path)))
    with psycopg.connect(shop.url, autocommit=True) as conn:  # changes land mid-extraction, in every range
        conn.execute("update shop.orders set updated_at = now(), amount = -2 where id % 97 = 0")
        conn.execute("insert into shop.orders select g, now(), 0, 'placed', null, null, null"
                     " from generate_series(%s::bigint, %s::bigint) g", (ORDERS + 1, ORDERS + 50))
    import time

    time.sleep(1.5)  # the dead driver's lease runs out
    assert sync(settings, database, text).status == "succeeded"  # finishes the extraction, same upper bound
    assert sync(settings, database, text).rows == 309 + 50  # exactly the changed and new rows, read once more
    table = loaded(database)
    assert_exactly_once_per_extraction(table, ("id",))
    latest: dict[int, datetime] = {}
    for i, ts in zip(table.column("id").to_pylist(), table.column("updated_at").to_pylist()):
        latest[i] = max(ts, latest.get(i, ts))
    assert set(latest.items()) == source(shop), "every row's latest version is in bronze"


def sqlite_path(settings: Any) -> Any:
    """A SQLite file in the IPAI home folder, where SQLite sources may read by default (IPAI_SQLITE_ROOTS)."""
    settings.home.mkdir(parents=True, exist_ok=True)
    return settings.home / "shop.db"


def test_two_tables_making_one_stream_are_refused_with_the_fix():
    from engine.core.errors import SpecError

    tables = "    - {table: a.orders}\n    - {table: b.orders}\n"
    with pytest.raises(SpecError, match=r"two tables make stream 'orders'; give one a `name:`"):
        parse_spec(spec_text("postgresql://u@localhost/db", tables))


def test_a_sqlite_file_is_read_in_key_ranges_then_incrementally(settings, database):
    import sqlite3

    path = sqlite_path(settings)
    with sqlite3.connect(path) as conn:
        conn.execute("create table orders (id integer primary key, updated_at text not null, amount real, note text)")
        conn.executemany("insert into orders values (?, ?, ?, ?)",
                         [(i, f"2026-11-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}", i * 0.5, f"n{i}")
                          for i in range(1, 12_001)])
        conn.execute("create index orders_updated_at on orders (updated_at)")
    tables = "    - {table: orders, cursor: updated_at}\n"
    first = sync(settings, database, spec_text(f"sqlite:///{path}", tables, partition_rows=4_000))
    assert (first.rows, first.partitions) == (12_000, 3)
    with sqlite3.connect(path) as conn:
        conn.execute("update orders set updated_at = '2026-11-02T00:00:00', note = 'changed' where id % 100 = 0")
    second = sync(settings, database, spec_text(f"sqlite:///{path}", tables, partition_rows=4_000))
    assert second.rows == 120
    table = pg_bronze(database, "orders")
    assert_exactly_once_per_extraction(table, ("id",))
    notes = dict(zip(table.column("id").to_pylist(), table.column("note").to_pylist()))
    assert notes[100] in ("n100", "changed") and table.num_rows == 12_120
    with pytest.raises(RunFailed, match=r"table orderz does not exist in sqlite:///.*tables there include: orders"):
        sync(settings, database, spec_text(f"sqlite:///{path}", "    - {table: orderz}\n", mode="full"))


MARIADB = "mysql://root@127.0.0.1:3306"


@pytest.fixture
def mariadb() -> Any:
    """A fresh MariaDB/MySQL database on the local server; skipped where none runs."""
    import uuid

    import pymysql

    try:
        admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", connect_timeout=3)
    except pymysql.err.OperationalError as exc:
        pytest.skip(f"no MariaDB/MySQL server at 127.0.0.1:3306 ({exc.args[-1]})")
    name = f"ipai_test_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f"create database {name}")
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", database=name, autocommit=True)
    try:
        yield name, conn
    finally:
        conn.close()
        with admin.cursor() as cur:
            cur.execute(f"drop database if exists {name}")
        admin.close()


def test_a_mariadb_table_is_read_in_key_ranges_with_its_types_then_incrementally(mariadb, settings, database):
    name, conn = mariadb
    with conn.cursor() as cur:
        cur.execute("create table orders (id bigint primary key, updated_at datetime(6) not null, placed timestamp(6)"
                    " null, amount decimal(12,2), status enum('placed','paid'), meta json, index (updated_at))")
        cur.execute("set time_zone = '+00:00'")
        cur.executemany("insert into orders values (%s, %s, %s, %s, %s, %s)",
                        [(i, datetime(2026, 11, 1) + timedelta(seconds=i), datetime(2026, 11, 1, 12), f"{i}.25",
                          "paid" if i % 2 else "placed", f'{{"n": {i}}}') for i in range(1, 9_001)])
    tables = "    - {table: orders, cursor: updated_at}\n"
    url = f"{MARIADB}/{name}"
    first = sync(settings, database, spec_text(url, tables, partition_rows=3_000))
    assert first.rows == 9_000 and first.partitions >= 3  # InnoDB's row count is an estimate
    delta = delta_bronze(settings, "orders")
    assert delta.schema.field("amount").type == pa.decimal128(12, 2)
    assert delta.schema.field("placed").type == pa.timestamp("us", tz="UTC")
    row = delta.filter(pa.compute.equal(delta.column("id"), 7)).to_pylist()[0]
    assert row["amount"] == decimal.Decimal("7.25") and row["status"] == "paid"
    assert row["placed"] == datetime(2026, 11, 1, 12, tzinfo=timezone.utc)
    with conn.cursor() as cur:
        cur.execute("update orders set updated_at = '2026-11-03 00:00:00', amount = 0 where id % 90 = 0")
    second = sync(settings, database, spec_text(url, tables, partition_rows=3_000))
    assert second.rows == 100
    assert_exactly_once_per_extraction(pg_bronze(database, "orders"), ("id",))


BIG_ORDERS = ("select o.id, o.updated_at, o.amount, o.status, c.name as customer, c.tier"
              " from shop.orders o join shop.customers c on c.id = o.customer_id"
              " where o.amount >= 100 and c.name like 'c%'")


@pytest.fixture
def shop_customers(shop: Any) -> Any:
    """The shop's orders with a customer each (100 customers, one tier each)."""
    with psycopg.connect(shop.url, autocommit=True) as conn:
        conn.execute("create table shop.customers (id int primary key, name text, tier numeric(4, 1))")
        conn.execute("insert into shop.customers select g, 'c' || g, g % 3 + 0.5 from generate_series(1, 100) g")
        conn.execute("alter table shop.orders add column customer_id int")
        conn.execute("update shop.orders set customer_id = 1 + id % 100")
        conn.execute("analyze shop.orders; analyze shop.customers")  # the estimate that cuts ranges is the planner's
    return shop


def big_orders(database: Any) -> set[tuple[Any, ...]]:
    with psycopg.connect(database.url) as conn:
        return set(conn.execute(f"select id, updated_at, amount, customer from ({BIG_ORDERS}) q").fetchall())


def test_a_query_stream_with_a_join_is_read_in_key_ranges_then_incrementally(shop_customers, settings, database):
    tables = (f'    - {{name: big_orders, query: "{BIG_ORDERS}", cursor: updated_at, primary_key: [id],'
              " partition_on: id}\n")
    first = sync(settings, database, spec_text(shop_customers.url, tables))
    truth = big_orders(shop_customers)
    assert first.rows == len(truth) > 20_000 and first.partitions >= 4, "the query's key range, cut by its estimate"
    assert_exactly_once_per_extraction(pg_bronze(database, "big_orders"), ("id",))
    delta = delta_bronze(settings, "big_orders")
    assert set(zip(*(delta.column(c).to_pylist() for c in ("id", "updated_at", "amount", "customer")))) == truth
    assert delta.schema.field("amount").type == pa.decimal128(12, 2)  # types of the result, as for a table
    assert delta.schema.field("tier").type == pa.decimal128(4, 1) and delta.schema.field("status").type == pa.string()
    assert first.tables[0].cursor == "2026-11-01T08:20:00.000000+00:00"

    with psycopg.connect(shop_customers.url, autocommit=True) as conn:
        conn.execute("update shop.orders set updated_at = now(), amount = amount + 1000 where id % 50 = 0")
        conn.execute("update shop.orders set updated_at = now(), amount = 1 where id % 50 = 25")  # leaves the query
    second = sync(settings, database, spec_text(shop_customers.url, tables))
    changed = pg_bronze(database, "big_orders").filter(
        pa.compute.equal(pa.compute.field("_ipai_run_id"), second.run_id))
    assert sorted(changed.column("id").to_pylist()) == list(range(50, ORDERS + 1, 50))
    assert second.partitions == 1 and sync(settings, database, spec_text(shop_customers.url, tables)).rows == 0


def test_a_query_that_does_not_compile_is_named_with_the_servers_words(shop, settings, database, vault):
    url = shop.url.replace("postgres@", "postgres:hunter2secret@")  # trust auth: the password is not checked
    vault.set("src_url", url)
    tables = '    - {name: bad, query: "select o.id, o.nope from shop.orders o", primary_key: [id]}\n'
    with pytest.raises(RunFailed, match=r"stream bad: its query does not compile on postgresql://postgres:\*\*\*@"
                                        r".*column o\.nope does not exist") as failed:
        sync(settings, database, spec_text("{secret: src_url}", tables, mode="full"))
    assert "hunter2secret" not in str(failed.value)
    tables = '    - {name: orders2, query: "select id from shop.orders", cursor: updated_at}\n'
    with pytest.raises(RunFailed, match=r"cursor column 'updated_at' does not exist in the query of stream orders2; "
                                        r"its columns: id"):
        sync(settings, database, spec_text(shop.url, tables))


def test_a_query_stream_that_would_write_fails_and_the_source_keeps_every_row(shop, settings, database):
    """Source sessions are read-only (issue 15): a query that passes the spec's SELECT check but writes through a
    function with side effects is refused by the server, whether planning or reading runs it, and nothing is
    deleted at the source."""
    with psycopg.connect(shop.url, autocommit=True) as conn:
        conn.execute("create function shop.purge(bigint) returns bigint language sql volatile as"
                     " 'delete from shop.orders where id = $1 returning id'")
    before = source(shop)
    tables = '    - {name: sneaky, query: "select o.id, shop.purge(o.id) as gone from shop.orders o", primary_key: [id]}\n'
    with pytest.raises(RunFailed, match=r"cannot execute DELETE in a read-only transaction"):
        sync(settings, database, spec_text(shop.url, tables, mode="full"))
    assert source(shop) == before


def test_a_stream_is_a_table_or_a_named_query():
    from engine.core.errors import SpecError

    with pytest.raises(SpecError, match=r"give exactly one of `table:` and `query:`"):
        parse_spec(spec_text("postgresql://u@localhost/db", '    - {table: a.b, query: "select 1", name: x}\n'))
    with pytest.raises(SpecError, match=r"a query stream needs `name:`"):
        parse_spec(spec_text("postgresql://u@localhost/db", '    - {query: "select 1"}\n'))
    with pytest.raises(SpecError, match=r"reads one SELECT"):
        parse_spec(spec_text("postgresql://u@localhost/db", '    - {name: x, query: "delete from t"}\n'))


def test_a_query_stream_on_sqlite_and_mariadb(settings, database, mariadb):
    import sqlite3

    path = sqlite_path(settings)
    with sqlite3.connect(path) as conn:
        conn.execute("create table orders (id integer primary key, updated_at text not null, note text)")
        conn.executemany("insert into orders values (?, ?, ?)",
                         [(i, f"2026-11-01T00:00:{i % 60:02d}", f"n{i % 7}") for i in range(1, 3_001)])
    query = "select id, updated_at, upper(note) as note from orders where note like 'n1%'"
    tables = f'    - {{name: q, query: "{query}", cursor: updated_at, primary_key: [id]}}\n'
    result = sync(settings, database, spec_text(f"sqlite:///{path}", tables, partition_rows=1_000))
    got = pg_bronze(database, "q")
    assert result.rows == got.num_rows == len([i for i in range(1, 3_001) if i % 7 == 1])
    assert set(got.column("note").to_pylist()) == {"N1"}

    name, conn = mariadb
    with conn.cursor() as cur:
        cur.execute("create table orders (id bigint primary key, updated_at datetime(6) not null,"
                    " amount decimal(12,2), note varchar(10))")
        cur.executemany("insert into orders values (%s, %s, %s, %s)",
                        [(i, datetime(2026, 11, 1) + timedelta(seconds=i), f"{i}.25", f"n{i % 7}")
                         for i in range(1, 3_001)])
    query = "select id, updated_at, amount * 2 as doubled, note from orders where note like 'n1%'"
    tables = f'    - {{name: m, query: "{query}", cursor: updated_at, primary_key: [id]}}\n'
    result = sync(settings, database, spec_text(f"{MARIADB}/{name}", tables, partition_rows=1_000))
    delta = delta_bronze(settings, "m")
    assert result.rows == delta.num_rows == 429
    row = delta.filter(pa.compute.equal(delta.column("id"), 8)).to_pylist()[0]
    assert row["doubled"] == decimal.Decimal("16.50") and row["note"] == "n1"


def test_a_mariadb_query_that_would_write_fails_and_the_source_keeps_every_row(mariadb, settings, database):
    """MySQL/MariaDB sessions are read-only too: a query calling a function that deletes fails, nothing goes."""
    name, conn = mariadb
    with conn.cursor() as cur:
        cur.execute("create table orders (id bigint primary key, note varchar(10))")
        cur.executemany("insert into orders values (%s, %s)", [(i, f"n{i}") for i in range(1, 101)])
        cur.execute("create function wipe(k bigint) returns bigint not deterministic modifies sql data"
                    " begin delete from orders where id = k; return k; end")
    tables = '    - {name: sneaky, query: "select id, wipe(id) as gone from orders", primary_key: [id]}\n'
    with pytest.raises(RunFailed, match=r"(?i)read.only transaction"):
        sync(settings, database, spec_text(f"{MARIADB}/{name}", tables, mode="full"))
    with conn.cursor() as cur:
        cur.execute("select count(*) from orders")
        assert cur.fetchone() == (100,)


def test_a_query_stream_cannot_follow_the_write_ahead_log():
    from engine.core.errors import SpecError

    text = spec_text("postgresql://u@localhost/db", '    - {name: q, query: "select 1 as id"}\n', mode="cdc")
    with pytest.raises(SpecError, match=r"stream q: a query has no change log to follow \(sync_mode cdc\)"):
        parse_spec(text)
