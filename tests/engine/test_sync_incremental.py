"""An incremental sync twice, with the source changing in between (real Postgres, Delta, Ray)."""

from __future__ import annotations

import psycopg
import pyarrow.compute as pc
import pytest

from engine.controlplane import state
from connectors.specload import parse_spec
from tests.support.syncing import sync
from tests.support.truth import (
    assert_exactly_once_per_extraction, bronze_delta, bronze_postgres, bronze_table, bronze_uri, day_cursor, keys,
    source_rows,
)

pytestmark = pytest.mark.usefixtures("ray_cluster")

SPEC = """
name: shop
source_type: sample
sync_mode: incremental
source:
  seed: 11
  days: 30
  today: {today}
  customers: 3000
  orders: 20000
  partition_rows: 4000
tuning:
  commit_rows: 10000
"""


def sync_day(settings, database, today: int, **opts):
    """Sync the shop as of day `today`; return the result and the spec."""
    text = SPEC.format(today=today)
    return sync(settings, database, text, **opts), parse_spec(text)


def test_second_incremental_run_extracts_only_new_and_changed_rows(settings, database):
    first, spec20 = sync_day(settings, database, 20)
    assert first.status == "succeeded"
    for stream, pk in (("customers", ("id",)), ("orders", ("id",)), ("order_lines", ("order_id", "line_no"))):
        truth = source_rows(spec20, stream)
        assert first.rows_by_stream[stream] == truth.num_rows
        pg = bronze_postgres(database.url, bronze_table(spec20, stream))
        assert sorted(keys(pg, pk)) == sorted(keys(truth, pk))

    second, spec25 = sync_day(settings, database, 25)
    for stream, pk in (("customers", ("id",)), ("orders", ("id",)), ("order_lines", ("order_id", "line_no"))):
        changed = source_rows(spec25, stream, after_day=20)
        assert changed.num_rows > 0, "the sample source must change between day 20 and day 25"
        assert second.rows_by_stream[stream] == changed.num_rows
        for table in (bronze_postgres(database.url, bronze_table(spec25, stream)),
                      bronze_delta(bronze_uri(spec25, stream, settings.lakehouse_uri))):
            assert_exactly_once_per_extraction(table, pk)
            latest = table.filter(pc.equal(table.column("_ipai_run_id"), second.run_id))
            assert sorted(keys(latest, pk)) == sorted(keys(changed, pk))
            assert table.num_rows == source_rows(spec20, stream).num_rows + changed.num_rows

    with database.connect() as conn:
        instance_id = second.instance_id
        assert state.get_cursor(conn, instance_id, "orders") == day_cursor(25)
        runs = conn.execute("select status, rows_processed from connector_runs order by created_at").fetchall()
    assert runs == [("succeeded", first.rows), ("succeeded", second.rows)]


def test_updated_order_carries_its_new_status_in_the_second_extraction(settings, database):
    sync_day(settings, database, 20)
    second, spec25 = sync_day(settings, database, 25)
    pg = bronze_postgres(database.url, bronze_table(spec25, "orders"))
    rows = [r for r in pg.to_pylist() if r["_ipai_run_id"] == second.run_id]
    truth = {r["id"]: r["status"] for r in source_rows(spec25, "orders", after_day=20).to_pylist()}
    assert {r["id"]: r["status"] for r in rows} == truth
    assert {"paid", "shipped", "delivered"} <= set(truth.values())


def test_full_refresh_rereads_everything_and_keeps_the_cursor(settings, database):
    sync_day(settings, database, 20)
    again, spec20 = sync_day(settings, database, 20, full_refresh=True)
    assert again.rows_by_stream["orders"] == source_rows(spec20, "orders").num_rows
    with psycopg.connect(database.url) as conn:
        assert state.get_cursor(conn, again.instance_id, "orders") == day_cursor(20)


def test_bronze_postgres_keeps_source_types_and_compact_system_columns(settings, database):
    sync_day(settings, database, 20)
    with psycopg.connect(database.url) as conn:
        types = dict(conn.execute(
            "select column_name, data_type from information_schema.columns"
            " where table_schema = 'bronze_dev' and table_name = 'raw_shop_orders'").fetchall())
    assert types["amount"] == "numeric" and types["updated_at"] == "timestamp with time zone"
    assert types["_ipai_run_id"] == types["_ipai_extraction_id"] == "uuid"
    assert types["_ipai_partition"] == "integer"
