"""Data-plane isolation (issue 15): every instance's tables are its own across tenants and envs.

Four instances share one name, `twin`: tenants local and acme, envs dev and prod, each reading a different
sample shop, with silver and gold, on real Postgres, Delta and the shared local Ray. Each lands in its own
schemas and folders and equals its own source; a full read soft-deletes only in its own silver; a silver
rebuild drops only its own tables; each tenant's analyst role reads only its tenant's gold. A spec override
aimed at another instance's table is refused with the owner named, and long names get a stable short form.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from deltalake import DeltaTable

from connectors.specload import parse_spec
from engine.controlplane import silver as silver_rebuild
from engine.controlplane.db import Database
from engine.controlplane.settings import Settings
from engine.controlplane.tenants import create_tenant
from engine.core.errors import RunFailed
from layers.addressing import Address, fit_identifier
from tests.support.cli import env_for
from tests.support.databases import migrated, scratch_database
from tests.support.syncing import sync
from tests.support.truth import source_rows

pytestmark = pytest.mark.usefixtures("ray_cluster")

SPEC = """
name: {name}
source_type: sample
env: {env}
sync_mode: {mode}
layers: [bronze, silver, gold]
source: {{seed: {seed}, days: 5, today: 5, customers: 40, orders: {orders}, partition_rows: 1000}}
"""
TWINS = {("local", "dev"): 11, ("local", "prod"): 12, ("acme", "dev"): 13, ("acme", "prod"): 14}
"""The seed each twin reads: four different shops."""


def twin_spec(env: str, seed: int, *, orders: int = 300, mode: str = "incremental", name: str = "twin") -> str:
    return SPEC.format(name=name, env=env, seed=seed, orders=orders, mode=mode)


def sync_as(tenant: str, settings: Settings, database: Database, text: str) -> Any:
    """One sync acting for `tenant` (the CLI does the same with IPAI_TENANT)."""
    if tenant != "local":
        with database.connect() as conn:
            database = database.with_session({"ipai.tenant_id": create_tenant(conn, tenant)})
    result = sync(settings, database, text)
    assert result.status == "succeeded", result
    return result


def rows(database: Database, query: str, *, role: str | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(database.url) as conn:
        if role:
            conn.execute(f'set role "{role}"')
        return conn.execute(query).fetchall()


def ids(database: Database, relation: str, *, alive: bool = False) -> list[int]:
    where = " where not _ipai_deleted" if alive else ""
    return sorted(r[0] for r in rows(database, f"select id from {relation}{where}"))


@pytest.fixture(scope="module")
def world(admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Database]]:
    """One database and lakehouse where the four twins are synced, shared by the tests below in file order
    (the last two change what they find: a full read, then a rebuild)."""
    with scratch_database(admin_url) as db:
        migrated(db)
        tmp = tmp_path_factory.mktemp("twins")
        settings = Settings(home=tmp / "home", database_url=db.url, lakehouse_uri=str(tmp / "lakehouse"),
                            ray_address=None)
        for (tenant, env), seed in TWINS.items():
            sync_as(tenant, settings, db, twin_spec(env, seed))
        yield settings, db


@pytest.fixture
def twins(world: tuple[Settings, Database]) -> dict[tuple[str, str], Address]:
    """The four twins' addresses."""
    return {key: Address(key[0], key[1], "twin") for key in TWINS}


def test_four_twins_land_apart_each_equal_to_its_source(twins, world):
    settings, database = world
    schemas = {(a.schema("bronze"), a.schema("silver")) for a in twins.values()}
    assert schemas == {("bronze_dev", "silver_dev"), ("bronze", "silver"), ("acme_bronze_dev", "acme_silver_dev"),
                       ("acme_bronze", "acme_silver")}
    for key, address in twins.items():
        truth = sorted(source_rows(parse_spec(twin_spec(key[1], TWINS[key])), "orders").column("id").to_pylist())
        bronze = f"{address.schema('bronze')}.{address.bronze_table('orders')}"
        silver = f"{address.schema('silver')}.{address.silver_table('orders')}"
        assert ids(database, bronze) == truth, f"{key}: bronze in Postgres"
        assert ids(database, silver, alive=True) == truth, f"{key}: silver in Postgres"
        for layer, table in (("bronze", address.bronze_table("orders")), ("silver", address.silver_table("orders"))):
            delta = DeltaTable(address.delta_uri(settings.lakehouse_uri, layer, table)).to_pyarrow_table(columns=["id"])
            assert sorted(delta.column("id").to_pylist()) == truth, f"{key}: {layer} in Delta"
    amounts = {key: rows(database, f"select sum(amount) from {a.schema('silver')}.{a.silver_table('orders')}")[0]
               for key, a in twins.items()}
    assert len(set(amounts.values())) == 4, "four different shops, four different totals"


def test_each_tenants_analysts_read_only_that_tenants_gold(twins, world):
    _, database = world
    counts = {}
    for (tenant, env), address in twins.items():
        view = f"{address.schema('gold')}.gold_sales_orders"
        analyst = "analyst" if tenant == "local" else "analyst_acme"
        counts[(tenant, env)] = rows(database, f"select instance, count(*) from {view} group by 1", role=analyst)
        other = "analyst_acme" if tenant == "local" else "analyst"
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            rows(database, f"select count(*) from {view}", role=other)
    assert counts == {key: [("twin", 300)] for key in TWINS}


def test_lakehouse_commands_act_on_their_tenants_tables_only(twins, world, tmp_path):
    settings, _ = world
    env = {**env_for(settings, database=False), "IPAI_TENANT": "acme", "COLUMNS": "200"}
    listed = subprocess.run([sys.executable, "-m", "engine.cli", "lakehouse", "tables"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert listed.returncode == 0, listed.stderr
    folders = {line.split("│")[1].strip() for line in listed.stdout.splitlines() if line.count("│") > 2}
    assert folders == {"acme_bronze", "acme_bronze_dev", "acme_silver", "acme_silver_dev"}
    local_table = twins[("local", "dev")].delta_uri(settings.lakehouse_uri, "bronze", "raw_twin_orders")
    other = subprocess.run([sys.executable, "-m", "engine.cli", "lakehouse", "optimize", local_table, "--dry-run"],
                           capture_output=True, text=True, env=env, timeout=120)
    assert other.returncode == 2 and "belongs to tenant local, not acme (IPAI_TENANT)" in other.stderr
    acme_table = twins[("acme", "prod")].delta_uri(settings.lakehouse_uri, "bronze", "raw_twin_orders")
    inside = subprocess.run([sys.executable, "-m", "engine.cli", "lakehouse", "export", acme_table, "--to",
                             twins[("acme", "dev")].delta_uri(settings.lakehouse_uri, "bronze", "raw_twin_orders")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert inside.returncode == 2 and "is inside the lakehouse" in inside.stderr, inside.stderr
    kept = DeltaTable(twins[("acme", "dev")].delta_uri(settings.lakehouse_uri, "bronze", "raw_twin_orders"))
    assert kept.to_pyarrow_table(columns=["id"]).num_rows == 300, "the table it would have replaced is intact"


def test_a_full_read_soft_deletes_only_in_its_own_instance(twins, world):
    settings, database = world
    sync_as("local", settings, database, twin_spec("dev", TWINS[("local", "dev")], orders=250, mode="full"))
    deleted = {key: rows(database, f"select count(*) filter (where _ipai_deleted) from "
                                   f"{a.schema('silver')}.{a.silver_table('orders')}")[0][0]
               for key, a in twins.items()}
    assert deleted == {("local", "dev"): 50, ("local", "prod"): 0, ("acme", "dev"): 0, ("acme", "prod"): 0}


def test_silver_rebuild_drops_only_its_own_tables(twins, world):
    settings, database = world
    with database.connect() as conn:
        found = silver_rebuild.find_silver_streams(conn, "twin", env="dev")
        assert found.address == twins[("local", "dev")]
        done = list(silver_rebuild.rebuild_silver(conn, found, control_plane_url=database.url,
                                                  lakehouse_uri=settings.lakehouse_uri))
    assert sorted((stream, table) for stream, table, _ in done) == [
        ("customers", "twin_customers"), ("order_lines", "twin_order_lines"), ("orders", "twin_orders")]
    assert {v for _, _, views in done for v in views} == {"gold_dev.gold_sales_orders",
                                                          "gold_dev.gold_sales_daily_revenue"}
    for key, address in twins.items():
        exists = rows(database, f"select to_regclass('{address.schema('silver')}.twin_orders') is not null")[0][0]
        in_delta = DeltaTable.is_deltatable(address.delta_uri(settings.lakehouse_uri, "silver", "twin_orders"))
        assert (exists, in_delta) == ((False, False) if key == ("local", "dev") else (True, True)), key
        gold = rows(database, f"select to_regclass('{address.schema('gold')}.gold_sales_orders') is not null")[0][0]
        assert gold == (key != ("local", "dev")), f"{key}: only the rebuilt instance's gold waits for the next run"


def test_an_override_aimed_at_another_instances_table_is_refused_naming_the_owner(settings, database):
    sync_as("local", settings, database, twin_spec("dev", 1))
    aimed = twin_spec("prod", 2) + "destinations: {postgres: {bronze_schema: bronze_dev}}\n"
    with pytest.raises(RunFailed) as refused:
        sync(settings, database, aimed)
    with database.connect() as conn:
        error = conn.execute("select error from connector_runs where id = %s", (refused.value.run_id,)).fetchone()[0]
    assert "instance twin (tenant local, env prod) cannot write where another instance's data is: " in error
    assert ("Postgres table bronze_dev.raw_twin_customers and 5 more tables belong to instance twin (env dev); "
            "change `destinations.postgres.bronze_schema` in the spec") in error
    assert rows(database, "select count(*) from bronze_dev.raw_twin_customers")[0][0] == 40, "dev's rows untouched"
    assert rows(database, "select count(*) from bronze_dev.raw_twin_orders")[0][0] == 300


LONG_NAME = "shop_" + "x" * 43  # 48 characters, the longest an instance name may be


def test_long_names_get_a_stable_short_form_named_by_validate(settings, database, tmp_path: Path):
    text = twin_spec("dev", 5, name=LONG_NAME)
    path = tmp_path / "long.yaml"
    path.write_text(text)
    validate = [sys.executable, "-m", "engine.cli", "spec", "validate", str(path)]
    first = subprocess.run(validate, capture_output=True, text=True, env=env_for(settings), timeout=120)
    second = subprocess.run(validate, capture_output=True, text=True, env=env_for(settings), timeout=120)
    full = f"raw_{LONG_NAME}_order_lines"
    short = fit_identifier(full)
    assert first.returncode == 0, first.stderr
    assert f"{full} is 64 bytes, over PostgreSQL's 63-byte limit" in first.stderr
    assert f"written as {short}" in first.stderr and len(short) == 63
    assert first.stderr == second.stderr, "the short form is the same every time"
    sync(settings, database, text)
    address = Address("local", "dev", LONG_NAME)
    assert address.bronze_table("order_lines") == short
    assert rows(database, f"select count(*) from bronze_dev.{short}")[0][0] == source_rows(
        parse_spec(text), "order_lines").num_rows


def test_a_destination_on_another_server_needs_the_operators_permission(settings, database):
    text = twin_spec("dev", 3) + "destinations: {postgres: {url: \"postgresql://postgres@169.254.169.254:5432/x\"}}\n"
    with pytest.raises(RunFailed) as refused:
        sync(settings, database, text)
    message = str(refused.value)
    assert "destinations.postgres.url host 169.254.169.254 is a cloud metadata address; refused" in message
    assert rows(database, "select count(*) from ipai_data_locations")[0][0] == 0, "refused before claiming anything"
