"""Lakehouse upkeep and Parquet export on real Delta tables in a temp folder, as `ipai lakehouse` runs them."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from deltalake import DeltaTable, write_deltalake
from typer.testing import CliRunner

from engine.cli.main import app
from engine.core.errors import ConfigError, NotFound
from layers.addressing import Address
from layers.bronze.delta import DeltaBronzeTable
from layers.lakehouse.export import MARKER, SUCCESS, export_parquet, read_marker
from layers.lakehouse.upkeep import (
    TableRef,
    UpkeepOptions,
    find_tables,
    optimize,
    parse_interval_hours,
    plan_upkeep,
    run_upkeep,
)


def batch(n: int, rows: int = 50) -> pa.Table:
    return pa.table({"id": pa.array(range(n * rows, (n + 1) * rows), pa.int64()),
                     "name": [f"row {i}" for i in range(n * rows, (n + 1) * rows)],
                     "day": [f"2024-01-{1 + n % 3:02d}"] * rows})


def sorted_rows(table: pa.Table) -> pa.Table:
    return table.select(sorted(table.column_names)).sort_by("id")


SHOP = Address("local", "dev", "shop")
"""The instance whose tables the lakehouse holds: `bronze_dev/raw_shop_orders`, `silver_dev/shop_orders`."""
BRONZE = SHOP.schema("bronze")


@pytest.fixture
def lakehouse(tmp_path: Path) -> str:
    return str(tmp_path / "lakehouse")


def bronze(lakehouse: str, name: str = "raw_shop_orders", appends: int = 12) -> DeltaBronzeTable:
    """A bronze table of `SHOP` written as the sync writes it: one small commit per partition, with its marker."""
    writer = DeltaBronzeTable(SHOP.delta_uri(lakehouse, "bronze", name))
    for n in range(appends):
        writer.append([f"ext1:p{n}"], [batch(n)])
    return writer


def test_optimize_compacts_small_files_keeping_rows_markers_and_time_travel(lakehouse):
    writer = bronze(lakehouse)
    before = DeltaTable(writer.uri)
    contents, at_version_3 = sorted_rows(before.to_pyarrow_table()), DeltaTable(writer.uri, version=3).to_pyarrow_table()

    [report] = optimize(find_tables(lakehouse, "raw_shop_orders"))

    table = DeltaTable(writer.uri)
    assert report.error is None
    assert (report.before.files, report.after.files, report.compacted_files) == (12, 1, 12)
    assert report.before.rows == report.after.rows == 600 and report.after.bytes < report.before.bytes
    assert report.after.version == table.version() > report.before.version == 11
    assert sorted_rows(table.to_pyarrow_table()).equals(contents)
    # The exactly-once markers survive compaction and the checkpoint: a replay is still skipped.
    ids = [f"ext1:p{n}" for n in range(12)]
    assert all(table.transaction_version(cid) == 1 for cid in ids)
    assert writer.committed(ids) == set(ids)
    assert report.checkpoint_version == table.version()
    assert (Path(writer.uri) / "_delta_log" / "_last_checkpoint").exists()
    # The default retention (7 days) vacuums nothing written just now: old versions still read.
    assert report.vacuumed_files == 0
    assert len(list(Path(writer.uri).glob("*.parquet"))) == 13
    assert DeltaTable(writer.uri, version=3).to_pyarrow_table().equals(at_version_3)

    [again] = optimize(find_tables(lakehouse, "raw_shop_orders"))
    assert (again.compacted_files, again.vacuumed_files, again.after.version) == (0, 0, report.after.version)


def test_dry_run_reports_and_changes_nothing(lakehouse):
    writer = bronze(lakehouse, appends=4)
    [plan] = plan_upkeep(find_tables(lakehouse), UpkeepOptions(dry_run=True))
    [report] = run_upkeep([plan])
    assert (report.dry_run, report.compacted_files, report.vacuumed_files) == (True, 4, 0)
    assert DeltaTable(writer.uri).version() == 3 and len(list(Path(writer.uri).glob("*.parquet"))) == 4


def test_short_retention_is_refused_without_force_and_breaks_time_travel_with_it(lakehouse):
    writer = bronze(lakehouse, appends=5)
    refs = find_tables(lakehouse, layer="bronze")
    for hours in (0, 24, 167):
        with pytest.raises(ConfigError) as refused:
            plan_upkeep(refs, UpkeepOptions(retention_hours=hours))
        assert f"retention of {hours} h, below the table's safety check of 168 h" in str(refused.value)
    assert "time travel" in str(refused.value) and "--force" in str(refused.value)
    [forced_alone] = plan_upkeep(refs, UpkeepOptions(force=True))  # --force without a retention: the default
    assert (forced_alone.retention_hours, forced_alone.warnings) == (168, ())
    assert DeltaTable(writer.uri).version() == 4  # nothing was touched

    [plan] = plan_upkeep(refs, UpkeepOptions(retention_hours=0, force=True))
    assert any("a writer committing right now" in w for w in plan.warnings)
    [report] = run_upkeep([plan])
    assert report.error is None and (report.compacted_files, report.vacuumed_files) == (5, 5)
    assert sorted_rows(DeltaTable(writer.uri).to_pyarrow_table()).equals(
        sorted_rows(pa.concat_tables([batch(n) for n in range(5)])))
    with pytest.raises(FileNotFoundError):
        DeltaTable(writer.uri, version=2).to_pyarrow_table()  # what the warning said would happen


def test_the_tables_own_retention_is_the_safety_check(lakehouse):
    uri = SHOP.delta_uri(lakehouse, "silver", "shop_orders")
    write_deltalake(uri, batch(0), configuration={"delta.deletedFileRetentionDuration": "interval 2 hours"})
    [plan] = plan_upkeep(find_tables(lakehouse, "shop_orders"), UpkeepOptions(retention_hours=24))
    assert (plan.retention_hours, plan.min_retention_hours, plan.warnings) == (24, 2.0, ())
    [default] = plan_upkeep(find_tables(lakehouse, "shop_orders"))
    assert default.retention_hours == 168
    assert [parse_interval_hours(v) for v in ("interval 7 days", "interval 90 minutes", "interval 1 week",
                                              "2 hours", "interval 0 seconds", None, "soon")] == [
        168, 1.5, 168, 2, 0, None, None]


def test_optimize_beside_a_concurrent_writer_loses_nothing(lakehouse):
    writer = bronze(lakehouse, appends=10)
    ref = TableRef(uri=writer.uri, layer=BRONZE, name="raw_shop_orders")
    done = threading.Event()
    written = [10]

    def append_meanwhile() -> None:
        while not done.is_set() and written[0] < 40:
            writer.append([f"ext1:p{written[0]}"], [batch(written[0])])
            written[0] += 1

    thread = threading.Thread(target=append_meanwhile)
    thread.start()
    reports = []
    try:
        while written[0] < 40 and thread.is_alive():  # upkeep rounds while the writer commits
            reports += optimize([ref])
    finally:
        done.set()
        thread.join()

    for r in reports:  # a conflict may be reported for a table, never swallowed or half-applied
        assert r.error is None or "conflicted with a concurrent commit" in r.error
    table = DeltaTable(writer.uri)
    assert sorted_rows(table.to_pyarrow_table()).equals(
        sorted_rows(pa.concat_tables([batch(n) for n in range(written[0])])))
    assert all(table.transaction_version(f"ext1:p{n}") == 1 for n in range(written[0]))
    assert len(reports) > 1 and sum(r.compacted_files for r in reports) > 10


def test_a_conflicting_commit_is_retried_once_on_the_latest_version(lakehouse):
    writer = bronze(lakehouse, appends=6)
    [plan] = plan_upkeep(find_tables(lakehouse, "raw_shop_orders"))
    # Between planning and compaction, a writer replaces the files the planned snapshot would compact.
    write_deltalake(writer.uri, pa.concat_tables([batch(n) for n in range(6, 9)]), mode="overwrite")
    write_deltalake(writer.uri, batch(9), mode="append")

    [report] = run_upkeep([plan])

    assert (report.error, report.retries) == (None, 1)
    assert report.after.files == 1
    assert sorted_rows(DeltaTable(writer.uri).to_pyarrow_table()).equals(
        sorted_rows(pa.concat_tables([batch(n) for n in range(6, 10)])))


def test_export_is_the_table_at_that_version_and_is_replaced_whole(lakehouse, tmp_path):
    writer = bronze(lakehouse, appends=4)
    dest = tmp_path / "exports" / "orders"

    first = export_parquet(writer.uri, dest, version=1)

    assert (first.version, first.rows) == (1, 100)
    assert ds.dataset(dest).to_table().sort_by("id").equals(
        DeltaTable(writer.uri, version=1).to_pyarrow_table().sort_by("id"))
    marker = json.loads((dest / SUCCESS).read_text())
    assert (marker["version"], marker["rows"], marker["table"]) == (1, 100, writer.uri)
    assert marker["files"] == sorted(str(p.relative_to(dest)) for p in dest.rglob("*.parquet"))

    again = export_parquet(writer.uri, dest, partition_by=["day"])

    latest = DeltaTable(writer.uri).to_pyarrow_table()
    assert (again.version, again.rows) == (3, 200)
    read = ds.dataset(dest, partitioning="hive").to_table()
    assert sorted_rows(read.cast(latest.select(read.column_names).schema)).equals(sorted_rows(latest))
    assert json.loads((dest / SUCCESS).read_text())["version"] == 3
    assert sorted(p.name for p in dest.parent.iterdir()) == ["orders"]  # no staging or retired folder left

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds no previous export"):
        export_parquet(writer.uri, tmp_path / "notes")
    with pytest.raises(NotFound, match="no version 9; its latest is 3"):
        export_parquet(writer.uri, dest, version=9)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_a_spark_folder_with_its_own_success_file_is_never_replaced(lakehouse, tmp_path):
    """Spark and Hadoop write `_SUCCESS` too: only our `_IPAI_EXPORT.json` lets a re-export replace a folder."""
    writer = bronze(lakehouse, appends=2)
    spark = tmp_path / "spark_job_output"
    spark.mkdir()
    (spark / SUCCESS).write_text("")
    (spark / "part-00000-abc.snappy.parquet").write_bytes(b"their data")

    with pytest.raises(ConfigError, match=r"holds no previous export of ours \(_IPAI_EXPORT.json\).*Spark"):
        export_parquet(writer.uri, spark)

    assert sorted(p.name for p in spark.iterdir()) == [SUCCESS, "part-00000-abc.snappy.parquet"]
    assert (spark / "part-00000-abc.snappy.parquet").read_bytes() == b"their data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lakehouse", "spark_job_output"]  # no staging left

    ours = tmp_path / "ours"
    export_parquet(writer.uri, ours)
    assert read_marker(ours)["rows"] == 100 and (ours / MARKER).is_file() and (ours / SUCCESS).is_file()
    assert export_parquet(writer.uri, ours).rows == 100  # our own marker: replaced


def test_export_to_an_object_store_uri_is_refused_without_making_a_folder(lakehouse, tmp_path, monkeypatch):
    bronze(lakehouse, appends=1)
    monkeypatch.chdir(tmp_path)
    refused = ipai(tmp_path, "export", "raw_shop_orders", "--to", "s3://b/x", "--lakehouse", lakehouse)
    assert refused.exit_code == 2
    assert "export destination s3://b/x" in refused.stderr and "object storage (s3://)" in refused.stderr
    assert not (tmp_path / "s3:").exists()
    with pytest.raises(ConfigError, match="abfss://"):
        export_parquet(lakehouse, "abfss://c@a.dfs.core.windows.net/x")
    assert not (tmp_path / "abfss:").exists()


def ipai(tmp_path: Path, *args: str):
    result = CliRunner().invoke(app, ["lakehouse", *args], env={"IPAI_HOME": str(tmp_path / "home")})
    assert "Traceback" not in result.output, result.output
    return result


def test_cli_lists_optimizes_and_exports(lakehouse, tmp_path):
    bronze(lakehouse, appends=3)
    listed = ipai(tmp_path, "tables", "--lakehouse", lakehouse)
    assert listed.exit_code == 0 and "raw_shop_orders" in listed.stdout and "150" in listed.stdout

    done = ipai(tmp_path, "optimize", "--layer", "bronze", "--lakehouse", lakehouse)
    assert done.exit_code == 0, done.output
    assert f"{BRONZE}/raw_shop_orders" in done.stdout and "3 -> 1" in done.stdout

    exported = ipai(tmp_path, "export", "raw_shop_orders", "--to", str(tmp_path / "out"), "--lakehouse", lakehouse)
    assert exported.exit_code == 0, exported.output
    assert "150 rows" in exported.stdout and (tmp_path / "out" / SUCCESS).exists()


def test_cli_errors_name_the_table_and_what_to_do(lakehouse, tmp_path):
    bronze(lakehouse, appends=2)
    unknown = ipai(tmp_path, "optimize", "raw_shop_ordres", "--lakehouse", lakehouse)
    assert unknown.exit_code == 1
    assert "no table 'raw_shop_ordres'" in unknown.stderr and f"{BRONZE}/raw_shop_orders" in unknown.stderr

    wrong_layer = ipai(tmp_path, "optimize", "raw_shop_orders", "--layer", "silver", "--lakehouse", lakehouse)
    assert wrong_layer.exit_code == 1 and f"raw_shop_orders is in {BRONZE}/raw_shop_orders" in wrong_layer.stderr

    refused = ipai(tmp_path, "optimize", "raw_shop_orders", "--retention-hours", "1", "--lakehouse", lakehouse)
    assert refused.exit_code == 2 and "refusing to vacuum with a retention of 1 h" in refused.stderr

    missing = ipai(tmp_path, "export", "nope", "--to", str(tmp_path / "out"), "--lakehouse", lakehouse)
    assert missing.exit_code == 1 and f"tables there: {BRONZE}/raw_shop_orders" in missing.stderr

    nowhere = ipai(tmp_path, "tables", "--lakehouse", str(tmp_path / "elsewhere"))
    assert nowhere.exit_code == 1 and "no lakehouse at" in nowhere.stderr
