"""Schema drift at the bronze writer (RELIABILITY test 14): the real `BronzeWriter` against a real Delta
folder and the real Postgres. A stored table has one type, a new partition brings another: additive
changes evolve both tables, values that fit the stored type are cast to it, rows whose value does not
fit are quarantined whole (the same rows in Delta and in Postgres), and a replay changes nothing."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from layers.addressing import Address
from layers.bronze.delta import DeltaBronzeTable
from layers.bronze.writer import Ack, BronzeTarget, BronzeWriteError, BronzeWriter

RUN_ID = str(uuid.UUID(int=1))
EXTRACTION_ID = str(uuid.UUID(int=2))
EXTRACTED_AT = datetime(2026, 11, 1, tzinfo=timezone.utc)
SYSTEM = ("_ipai_run_id", "_ipai_extraction_id", "_ipai_partition", "_ipai_extracted_at")
SHOP = Address("local", "dev", "shop")
"""The instance whose stream `items` the writer writes: `bronze_dev.raw_shop_items`, quarantine beside it."""


def partition(columns: dict[str, pa.Array], number: int) -> pa.Table:
    """A read task's table: the source's columns stamped with the system columns, as `read_partition` does."""
    table = pa.table(columns)
    n = table.num_rows
    first = pa.repeat(pa.scalar(0, pa.int32()), n)
    for name, text in (("_ipai_run_id", RUN_ID), ("_ipai_extraction_id", EXTRACTION_ID)):
        column = pa.DictionaryArray.from_arrays(first, pa.array([text], pa.string()))
        table = table.append_column(pa.field(name, column.type), column)
    table = table.append_column("_ipai_partition", pa.array([number] * n, pa.int32()))
    return table.append_column("_ipai_extracted_at", pa.array([EXTRACTED_AT] * n, pa.timestamp("us", tz="UTC")))


def target(tmp_path: Path, url: str | None, *, delta: bool = True) -> BronzeTarget:
    """Where a run puts stream `items` of `SHOP`, with `tmp_path` as the lakehouse."""
    table = SHOP.bronze_table("items")
    return BronzeTarget(table, SHOP.delta_uri(str(tmp_path), "bronze", table) if delta else None, url,
                        SHOP.schema("bronze"), quarantine=SHOP.quarantine_table("items"))


def delta_rows(uri: str, column: str) -> list[tuple[Any, Any]]:
    table = DeltaTable(uri).to_pyarrow_table()
    return sorted((r["id"], r[column]) for r in table.select(["id", column]).to_pylist())


def delta_type(uri: str, column: str) -> pa.DataType:
    return pa.schema(DeltaTable(uri).schema().to_arrow()).field(column).type


def pg_rows(url: str, bronze: BronzeTarget, column: str) -> list[tuple[Any, Any]]:
    with psycopg.connect(url) as conn:
        return sorted(conn.execute(
            f'select id, "{column}" from "{bronze.postgres_schema}"."{bronze.table}"').fetchall())


def pg_type(url: str, bronze: BronzeTarget, column: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("select data_type from information_schema.columns where table_schema = %s"
                           " and table_name = %s and column_name = %s",
                           (bronze.postgres_schema, bronze.table, column)).fetchone()
    assert row is not None, f"no column {column} in {bronze.postgres_schema}.{bronze.table}"
    return str(row[0])


def held_in_delta(uri: str) -> list[dict[str, Any]]:
    """The rows the Delta quarantine table holds; none when it was never created. Any other read error fails
    the test: it must not pass for an unreadable table."""
    try:
        table = DeltaTable(uri).to_pyarrow_table()
    except TableNotFoundError:
        return []
    return sorted(table.to_pylist(), key=lambda r: r["_ipai_row"])


def held_in_postgres(url: str, bronze: BronzeTarget) -> list[dict[str, Any]]:
    """The rows the Postgres quarantine table beside `bronze` holds; none when it was never created."""
    name = f'"{bronze.postgres_schema}"."{bronze.quarantine_table}"'
    with psycopg.connect(url) as conn:
        if conn.execute("select to_regclass(%s)", (name,)).fetchone() == (None,):
            return []
        cur = conn.execute(f"select * from {name}")
        names = [d.name for d in cur.description or []]
        return sorted((dict(zip(names, r, strict=True)) for r in cur.fetchall()), key=lambda r: r["_ipai_row"])


def from_postgres(value: Any) -> Any:
    """Postgres bronze keeps nested values as JSON text."""
    return json.loads(value) if isinstance(value, str) and value[:1] in ("{", "[") else value


@dataclass(frozen=True)
class Drift:
    stored: pa.Array          # column `v` of partition 0 (ids 1, 2, ...): makes the tables
    incoming: pa.Array        # column `v` of partition 1 (ids 11, 12, ...)
    rows: list[tuple[int, Any]]  # (id, v) in bronze afterwards, Delta and Postgres alike
    delta_type: pa.DataType
    pg_type: str
    held: list[tuple[int, Any, str]]  # (id, _ipai_value, _ipai_reason) quarantined
    pg_rows: list[tuple[int, Any]] | None = None  # where Postgres' JSON text says less than Delta's struct


CASES = {
    "int64 stored, double arrives": Drift(
        pa.array([1], pa.int64()), pa.array([2.0, 2.5, None]),
        [(1, 1), (11, 2), (13, None)], pa.int64(), "bigint",
        [(12, "2.5", "column v: value 2.5 (double) does not fit int64")]),
    "double stored, int64 arrives": Drift(
        pa.array([1.5]), pa.array([2, 3], pa.int64()),
        [(1, 1.5), (11, 2.0), (12, 3.0)], pa.float64(), "double precision", []),
    "int32 stored, int64 arrives": Drift(
        pa.array([1], pa.int32()), pa.array([5, 2**40], pa.int64()),
        [(1, 1), (11, 5)], pa.int32(), "integer",
        [(12, str(2**40), f"column v: value {2**40} (int64) does not fit int32")]),
    "int64 stored, int32 arrives": Drift(
        pa.array([1], pa.int64()), pa.array([2], pa.int32()),
        [(1, 1), (11, 2)], pa.int64(), "bigint", []),
    "int64 stored, string arrives": Drift(
        pa.array([1], pa.int64()), pa.array(["7", "n/a"]),
        [(1, 1), (11, 7)], pa.int64(), "bigint",
        [(12, "n/a", "column v: value 'n/a' (string) does not fit int64")]),
    "string stored, int64 arrives": Drift(
        pa.array(["a"]), pa.array([2], pa.int64()),
        [(1, "a"), (11, "2")], pa.string(), "text", []),
    "decimal stored, a wider decimal arrives": Drift(
        pa.array([Decimal("1.25")], pa.decimal128(10, 2)),
        pa.array([Decimal("1.5000"), Decimal("1.2345")], pa.decimal128(20, 4)),
        [(1, Decimal("1.25")), (11, Decimal("1.5"))], pa.decimal128(10, 2), "numeric",
        [(12, "1.2345", "column v: value 1.2345 (decimal128(20, 4)) does not fit decimal128(10, 2)")]),
    "struct gains a field": Drift(
        pa.array([{"a": 1}]), pa.array([{"a": 2, "b": "x"}]),
        [(1, {"a": 1, "b": None}), (11, {"a": 2, "b": "x"})],
        pa.struct([("a", pa.int64()), ("b", pa.string())]), "text", [],
        pg_rows=[(1, {"a": 1}), (11, {"a": 2, "b": "x"})]),  # the JSON of what was written then
    "struct stored, string arrives": Drift(
        pa.array([{"a": 1}]), pa.array(["x", None]),
        [(1, {"a": 1}), (12, None)], pa.struct([("a", pa.int64())]), "text",
        [(11, "x", "column v: value 'x' (string) does not fit struct<a: int64>")]),
    "list<int> stored, list<string> arrives": Drift(
        pa.array([[1]]), pa.array([["4", None], ["x"]]),
        [(1, [1]), (11, [4, None])], pa.list_(pa.int64()), "text",
        [(12, '["x"]', 'column v: value ["x"] (list<item: string>) does not fit list<item: int64>')]),
}


def write(writer: BronzeWriter, *parts: tuple[str, pa.Table]) -> list[Ack]:
    return writer.write([c for c, _ in parts], *[t for _, t in parts])


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_a_drifted_partition_lands_the_same_in_delta_and_postgres(tmp_path, database, case):
    bronze = target(tmp_path, database.url)
    first = partition({"id": pa.array(range(1, len(case.stored) + 1)), "v": case.stored}, 0)
    second = partition({"id": pa.array(range(11, 11 + len(case.incoming))), "v": case.incoming}, 1)
    writer = BronzeWriter(bronze)
    try:
        write(writer, ("e:p0", first))
        [ack] = write(writer, ("e:p1", second))
        versions = (DeltaTable(bronze.delta_uri).version(), held_in_delta(str(bronze.quarantine_delta_uri)))
        # A replay of the same commit id (the driver died before recording it) writes nothing anywhere.
        [replayed] = write(writer, ("e:p1", second))
    finally:
        writer.close()

    assert (ack.rows, ack.quarantined, ack.delta_written, ack.postgres_written) == (
        second.num_rows, len(case.held), True, True)
    assert sum(ack.reasons.values()) == len(case.held)
    assert not replayed.delta_written and not replayed.postgres_written and replayed.quarantined == 0
    assert (DeltaTable(bronze.delta_uri).version(), held_in_delta(str(bronze.quarantine_delta_uri))) == versions

    assert delta_rows(str(bronze.delta_uri), "v") == case.rows
    assert [(i, from_postgres(v)) for i, v in pg_rows(database.url, bronze, "v")] == (case.pg_rows or case.rows)
    assert delta_type(str(bronze.delta_uri), "v") == case.delta_type
    assert pg_type(database.url, bronze, "v") == case.pg_type

    for held in (held_in_delta(str(bronze.quarantine_delta_uri)),
                 held_in_postgres(database.url, bronze)):
        assert [(json.loads(r["_ipai_row"])["id"], r["_ipai_value"], r["_ipai_reason"]) for r in held] == case.held
        for r in held:
            row = json.loads(r["_ipai_row"])
            assert r["_ipai_column"] == "v"
            assert row["_ipai_partition"] == 1 and row["_ipai_run_id"] == RUN_ID  # the whole row, as it came
            assert (r["_ipai_run_id"], r["_ipai_extraction_id"], r["_ipai_partition"], r["_ipai_extracted_at"]) == (
                RUN_ID, EXTRACTION_ID, 1, EXTRACTED_AT)


def test_new_and_dropped_columns_evolve_both_tables(tmp_path, database):
    bronze = target(tmp_path, database.url)
    writer = BronzeWriter(bronze)
    try:
        write(writer, ("e:p0", partition({"id": pa.array([1]), "n": pa.array([10])}, 0)))
        # One commit: a partition without `n` (dropped at the source) and one with a new column `tag`.
        acks = write(writer, ("e:p1", partition({"id": pa.array([2])}, 1)),
                     ("e:p2", partition({"id": pa.array([3]), "n": pa.array([30]), "tag": pa.array(["x"])}, 2)))
    finally:
        writer.close()
    assert [(a.rows, a.quarantined) for a in acks] == [(1, 0), (1, 0)]
    for column, expected in (("n", [(1, 10), (2, None), (3, 30)]), ("tag", [(1, None), (2, None), (3, "x")])):
        assert delta_rows(str(bronze.delta_uri), column) == expected
        assert pg_rows(database.url, bronze, column) == expected
    assert pg_type(database.url, bronze, "tag") == "text"
    assert held_in_delta(str(bronze.quarantine_delta_uri)) == held_in_postgres(database.url, bronze) == []


def test_a_new_table_takes_the_widest_type_of_its_first_batch(tmp_path, database):
    bronze = target(tmp_path, database.url)
    writer = BronzeWriter(bronze)
    try:
        acks = write(writer, ("e:p0", partition({"id": pa.array([1]), "n": pa.array([1], pa.int32())}, 0)),
                     ("e:p1", partition({"id": pa.array([2]), "n": pa.array([2.5])}, 1)),
                     ("e:p2", partition({"id": pa.array([3, 4]), "n": pa.array(["4", "four"])}, 2)))
    finally:
        writer.close()
    assert [a.quarantined for a in acks] == [0, 0, 1]
    assert acks[2].reasons == {"column n: string does not fit double": 1}
    expected = [(1, 1.0), (2, 2.5), (3, 4.0)]
    assert delta_rows(str(bronze.delta_uri), "n") == pg_rows(database.url, bronze, "n") == expected
    assert delta_type(str(bronze.delta_uri), "n") == pa.float64()
    assert pg_type(database.url, bronze, "n") == "double precision"


def test_postgres_alone_widens_its_columns_in_place(tmp_path, database):
    bronze = target(tmp_path, database.url, delta=False)
    writer = BronzeWriter(bronze)
    try:
        write(writer, ("e:p0", partition({"id": pa.array([1]), "n": pa.array([1]), "i": pa.array([1], pa.int32()),
                                          "s": pa.array([{"a": 1}])}, 0)))
        [ack] = write(writer, ("e:p1", partition({"id": pa.array([2, 3]), "n": pa.array([2.5, 3.0]),
                                                  "i": pa.array([2**40, 2], pa.int64()),
                                                  "s": pa.array(["text now", "again"])}, 1)))
        [bad] = write(writer, ("e:p2", partition({"id": pa.array([4]), "n": pa.array(["n/a"])}, 2)))
    finally:
        writer.close()
    assert (ack.quarantined, bad.quarantined) == (0, 1)
    assert pg_type(database.url, bronze, "n") == "double precision"
    assert pg_type(database.url, bronze, "i") == "bigint"
    assert pg_rows(database.url, bronze, "n") == [(1, 1.0), (2, 2.5), (3, 3.0)]
    assert pg_rows(database.url, bronze, "i") == [(1, 1), (2, 2**40), (3, 2)]
    assert pg_rows(database.url, bronze, "s") == [(1, '{"a": 1}'), (2, "text now"), (3, "again")]
    [held] = held_in_postgres(database.url, bronze)
    assert (held["_ipai_column"], held["_ipai_value"], held["_ipai_reason"]) == (
        "n", "n/a", "column n: value 'n/a' (string) does not fit double")


def test_delta_alone_quarantines_in_the_lakehouse(tmp_path):
    bronze = target(tmp_path, None)
    writer = BronzeWriter(bronze)
    try:
        write(writer, ("e:p0", partition({"id": pa.array([1]), "n": pa.array([1])}, 0)))
        [ack] = write(writer, ("e:p1", partition({"id": pa.array([2, 3]), "n": pa.array([2.0, 2.5])}, 1)))
    finally:
        writer.close()
    assert (ack.rows, ack.quarantined, ack.delta_written, ack.postgres_written) == (2, 1, True, False)
    assert delta_rows(str(bronze.delta_uri), "n") == [(1, 1), (2, 2)]
    assert [r["_ipai_value"] for r in held_in_delta(str(bronze.quarantine_delta_uri))] == ["2.5"]


def test_a_crash_between_the_quarantine_and_the_bronze_commit_quarantines_once(tmp_path, database, monkeypatch):
    bronze = target(tmp_path, database.url)
    first = partition({"id": pa.array([1]), "n": pa.array([1])}, 0)
    second = partition({"id": pa.array([2, 3]), "n": pa.array(["2", "n/a"])}, 1)
    append = DeltaBronzeTable.append

    def bronze_commit_fails(self: DeltaBronzeTable, commit_ids: Any, tables: Any) -> None:
        if self.uri == bronze.delta_uri and "e:p1" in commit_ids:
            raise OSError("the object store went away")
        append(self, commit_ids, tables)

    writer = BronzeWriter(bronze)
    try:
        write(writer, ("e:p0", first))
        monkeypatch.setattr(DeltaBronzeTable, "append", bronze_commit_fails)
        with pytest.raises(BronzeWriteError, match="the object store went away"):
            write(writer, ("e:p1", second))
        assert len(held_in_delta(str(bronze.quarantine_delta_uri))) == 1  # committed before the bronze commit
        monkeypatch.setattr(DeltaBronzeTable, "append", append)
        [ack] = write(writer, ("e:p1", second))
        [again] = write(writer, ("e:p1", second))
    finally:
        writer.close()
    # Postgres had committed the partition (rows and quarantine in one transaction); Delta finishes it now.
    assert (ack.delta_written, ack.postgres_written, ack.rows, ack.quarantined) == (True, False, 2, 1)
    assert not again.delta_written and not again.postgres_written
    assert delta_rows(str(bronze.delta_uri), "n") == pg_rows(database.url, bronze, "n") == [(1, 1), (2, 2)]
    for held in (held_in_delta(str(bronze.quarantine_delta_uri)),
                 held_in_postgres(database.url, bronze)):
        assert [(r["_ipai_column"], r["_ipai_value"]) for r in held] == [("n", "n/a")]
    with psycopg.connect(database.url) as conn:
        ledger = conn.execute(f'select commit_id, rows from "{bronze.postgres_schema}"._ipai_loads'
                              " order by 1").fetchall()
    assert ledger == [("e:p0", 1), ("e:p1", 2)]  # the partition's rows: in bronze plus quarantined


@pytest.mark.parametrize("silver_first", [True, False], ids=["silver first", "bronze first"])
def test_silver_and_bronze_share_one_quarantine_table(tmp_path, database, silver_first):
    from layers.silver.evolve import Quarantined, set_aside
    from layers.silver.quarantine import write_quarantine
    from layers.silver.target import SilverTarget

    bronze = target(tmp_path, database.url)
    silver = SilverTarget(table=SHOP.silver_table("items"), key=("id",), cursor=None, bronze_table=bronze.table,
                          quarantine_table=bronze.quarantine_table, quarantine_delta_uri=bronze.quarantine_delta_uri,
                          postgres_url=database.url, postgres_schema=SHOP.schema("silver"),
                          bronze_postgres_schema=bronze.postgres_schema)
    rows = partition({"id": pa.array([9]), "n": pa.array(["zz"])}, 0).drop_columns(["_ipai_extraction_id",
                                                                                    "_ipai_partition"])

    def silver_sets_aside() -> None:
        write_quarantine(silver, Quarantined(set_aside(rows, ["id"], "n does not fit silver's type", "n")),
                         run_id=RUN_ID, extraction_id=EXTRACTION_ID)

    if silver_first:
        silver_sets_aside()
    writer = BronzeWriter(bronze)
    try:
        write(writer, ("e:p0", partition({"id": pa.array([1]), "n": pa.array([1])}, 0)))
        write(writer, ("e:p1", partition({"id": pa.array([2]), "n": pa.array(["n/a"])}, 1)))
    finally:
        writer.close()
    if not silver_first:
        silver_sets_aside()
    for held in (held_in_delta(str(bronze.quarantine_delta_uri)),
                 held_in_postgres(database.url, bronze)):
        assert sorted(((r["id"], r["_ipai_value"], r["_ipai_partition"]) for r in held), key=lambda r: r[1]) == [
            (None, "n/a", 1), ("9", "zz", None)]
