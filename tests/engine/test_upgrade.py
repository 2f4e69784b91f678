"""Upgrading tables made before every tenant and env had its own (issue 15): the next run moves them.

The previous release wrote every instance, whatever its env, to `bronze.raw_<name>_<stream>`,
`silver.<name>_<stream>` and `<lakehouse>/bronze|silver/...`, and kept no registry of tables. A dev instance
synced then is made here the honest way: synced as prod (today's prod address is the old one), then turned
into the dev instance it was, with its registry rows gone. Its next run moves its tables to bronze_dev and
silver_dev, keeping every row, the load ledger and the cursors, and reads only new rows.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from deltalake import DeltaTable

from connectors.specload import parse_spec
from engine.controlplane.db import Database
from engine.controlplane.settings import Settings
from engine.core.errors import RunFailed
from tests.support.syncing import sync
from tests.support.truth import source_rows

pytestmark = pytest.mark.usefixtures("ray_cluster")

SPEC = """
name: shop
source_type: sample
env: {env}
layers: [bronze, silver]
source: {{seed: 21, days: 10, today: {today}, customers: 60, orders: 400, partition_rows: 1000}}
streams: [{{name: customers}}, {{name: orders}}]
"""


def scalar(database: Database, query: str, params: Any = None) -> Any:
    with psycopg.connect(database.url) as conn:
        return conn.execute(query, params).fetchone()[0]


def legacy_dev_instance(settings: Settings, database: Database, *, today: int = 5) -> None:
    """`shop` in env dev, synced by the previous release: its tables at the old addresses, no registry rows."""
    result = sync(settings, database, SPEC.format(env="prod", today=today))
    assert result.status == "succeeded"
    with psycopg.connect(database.url, autocommit=True) as conn:
        conn.execute("delete from ipai_data_locations where instance_id = %s", (result.instance_id,))
        conn.execute("update connector_instances set env = 'dev' where id = %s", (result.instance_id,))


def test_the_next_run_moves_old_tables_keeping_rows_ledger_and_cursors(settings, database):
    legacy_dev_instance(settings, database)
    before = {t: scalar(database, f"select count(*) from bronze.raw_shop_{t}") for t in ("customers", "orders")}
    ledger_before = scalar(database, "select count(*) from bronze._ipai_loads where table_name = 'raw_shop_orders'")
    cursor_before = scalar(database, "select state_json from connector_state where stream = 'orders' and kind = 'cursor'")
    assert before["orders"] > 0 and ledger_before > 0 and cursor_before is not None

    text = SPEC.format(env="dev", today=7)  # two days later: new and changed rows
    result = sync(settings, database, text)
    assert result.status == "succeeded"

    with psycopg.connect(database.url) as conn:
        moved = [r[0] for r in conn.execute("select message from connector_run_logs where run_id = %s"
                                            " and event = 'table.moved' order by id", (result.run_id,))]
        assert scalar(database, "select to_regclass('bronze.raw_shop_orders')") is None, "nothing left behind"
    assert any("Postgres table bronze.raw_shop_orders moved to Postgres table bronze_dev.raw_shop_orders" in m
               for m in moved), moved
    assert any("silver.shop_orders moved to Postgres table silver_dev.shop_orders" in m for m in moved), moved
    assert any(f"{settings.lakehouse_uri}/bronze/raw_shop_orders moved to" in m for m in moved), moved

    spec = parse_spec(text)
    new_orders = source_rows(spec, "orders", after_day=5).num_rows
    assert result.rows_by_stream["orders"] == new_orders, "the incremental run read only rows after the cursor"
    assert scalar(database, "select count(*) from bronze_dev.raw_shop_orders") == before["orders"] + new_orders
    assert scalar(database, "select count(*) from bronze_dev._ipai_loads where table_name = 'raw_shop_orders'") > (
        ledger_before), "the old ledger rows came along, and the new run's were added"
    assert scalar(database, "select count(*) from bronze._ipai_loads where table_name = 'raw_shop_orders'") == 0
    truth = sorted(source_rows(spec, "orders").column("id").to_pylist())
    with psycopg.connect(database.url) as conn:
        silver = sorted(r[0] for r in conn.execute("select id from silver_dev.shop_orders where not _ipai_deleted"))
    assert silver == truth
    delta = DeltaTable(f"{settings.lakehouse_uri}/bronze_dev/raw_shop_orders").to_pyarrow_table(columns=["id"])
    assert delta.num_rows == before["orders"] + new_orders
    assert not DeltaTable.is_deltatable(f"{settings.lakehouse_uri}/bronze/raw_shop_orders")


def test_an_old_table_two_instances_wrote_is_not_moved_whole(settings, database):
    legacy_dev_instance(settings, database)
    # Today's prod twin takes the old address (its own now) and writes its rows into it.
    assert sync(settings, database, SPEC.format(env="prod", today=6)).status == "succeeded"
    text = SPEC.format(env="dev", today=7)
    with pytest.raises(RunFailed) as refused:
        sync(settings, database, text)
    message = str(refused.value)
    assert "Postgres table bronze.raw_shop_customers was written before each tenant and env had its own tables" in message
    assert "--full-refresh" in message
    prod_rows = scalar(database, "select count(*) from bronze.raw_shop_orders")

    result = sync(settings, database, text, full_refresh=True)
    assert result.status == "succeeded"
    spec = parse_spec(text)
    assert scalar(database, "select count(*) from bronze_dev.raw_shop_orders") == source_rows(spec, "orders").num_rows
    assert scalar(database, "select count(*) from bronze.raw_shop_orders") == prod_rows, "the prod twin's table stays"
