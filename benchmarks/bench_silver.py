"""Silver merge against a plain full rewrite: 1M changed rows into a 20M-row silver table (issue 6).

    python benchmarks/bench_silver.py                                  # 20,000,000 rows, 1,000,000 changed
    python benchmarks/bench_silver.py --rows 200000 --changes 10000    # smoke run, under a minute
    python benchmarks/bench_silver.py --only delta --no-uniform        # one destination, no worst case

An orders-like silver table of `--rows` rows (id bigint key, created_at, updated_at as the cursor, status,
amount decimal(12,2), customer_id, a ~40-byte note; values are deterministic functions of the id) is built
once per destination, outside every clock, through the engine's own path: `layers.silver.merge.SilverMerger` fed
bronze-shaped chunks of `--build-chunk-rows` (the engine's `chunk_rows`), the first written directly, the
rest merged. Postgres is then vacuumed (freeze, analyze), as autovacuum would have left it.

The changed rows are one bronze chunk of `--changes` rows, as an incremental run extracts them (ordered by
`updated_at`): 80% updates of keys among the newest 10% of the table (new status, amount, note and
updated_at), 20% new keys. Each side starts from its own copy of the built table (a copied Delta folder; a
Postgres database made from the built one as a template), and runs in a subprocess of its own, one after
the other (never at once: the machine has two cores), while its process tree is sampled:

  Delta merge        `SilverMerger(SilverTarget(delta_uri=...)).merge(chunk)`: the engine's MERGE.
  Delta rewrite      what a tool without merges does: read the whole silver table, add the chunk (prepared
                     as the merge prepares it), keep the latest version per key, `write_deltalake(overwrite)`.
  Postgres merge     `SilverMerger(SilverTarget(postgres_url=...)).merge(chunk)`: COPY into a temporary
                     table, then MERGE, in one transaction.
  Postgres rewrite   in one transaction: COPY the chunk into a temporary table, create a new table as the
                     union of silver and the chunk keeping the latest version per key, add the primary key,
                     drop the old table and rename the new one.
  Delta merge, uniform keys
                     the worst case, not the target: the same mix of changes with the updated keys spread
                     uniformly over the whole table, so that every file is rewritten.

After each side, outside its clock, the table is checked against what the data must be: row count
(`--rows` + new keys), distinct keys, sums of id, amount, customer_id, updated_at and note length, rows per
status, rows carrying the change's run id; and a sample of changed, new and untouched keys, row by row.
Delta and Postgres must agree. Any difference stops the benchmark. The table is printed and written to
`benchmarks/results/bench_silver-<timestamp>.md`; the targets: the merge under 25% of the rewrite's time,
and its memory bounded by the changed rows, not the table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the engine lives at the repo root

from benchmarks.common import (  # noqa: E402 - needs the repo root on sys.path
    SAMPLE_S, Usage, add_child_arguments, add_database_url, add_wait_idle, admin_database, bench_parser,
    child_command, child_result, database, describe_server, measure_note, print_and_write, print_result,
    run_measured, start_child, wait_idle,
)
from layers.addressing import Address  # noqa: E402

DELTA_MERGE, DELTA_REWRITE = "Delta merge", "Delta rewrite"
PG_MERGE, PG_REWRITE = "Postgres merge", "Postgres rewrite"
DELTA_UNIFORM = "Delta merge, uniform keys"
SIDES = (DELTA_MERGE, DELTA_REWRITE, PG_MERGE, PG_REWRITE, DELTA_UNIFORM)
REWRITE_OF = {DELTA_MERGE: DELTA_REWRITE, DELTA_UNIFORM: DELTA_REWRITE, PG_MERGE: PG_REWRITE}

SPEED_TARGET = 0.25
"""The merge's seconds at most this share of the rewrite's."""
MEMORY_TABLE_SHARE = 0.25
"""The merge's own memory (peak less the process at its clock's start) under this share of the table's
size in memory: what a merge holding the table, or a large part of it, could not stay under."""
RECENT_SHARE = 0.10
NEW_SHARE = 0.20
SAMPLE_KEYS = 500

INSTANCE, STREAM = Address("local", "prod", "bench"), "orders"
"""The silver table merged into is stream `orders` of a prod instance `bench`: `silver.bench_orders`."""
SCHEMA, TABLE, KEY, CURSOR = INSTANCE.schema("silver"), INSTANCE.silver_table(STREAM), ("id",), "updated_at"
DATA_COLUMNS = ("id", "created_at", "updated_at", "status", "amount", "customer_id", "note")
STATUSES = ("pending", "paid", "shipped", "delivered", "cancelled", "returned")
T0_S = 1_704_067_200  # 2024-01-01 00:00 UTC
ID_STEP_S = 3  # one order every 3 s: 20M orders span 1.9 years
DAY_S = 86_400
NAMESPACE = uuid.UUID("6f1c1f0e-8a57-4c1e-9a57-5b1f5e0c0b6e")


# -- the data ---------------------------------------------------------------------------------------


def _mix(ids: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 of each id and `salt`: the pseudo-random bits every value is drawn from."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(salt * 0x632BE59BD9B4E019 % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


@dataclass(frozen=True)
class Orders:
    """The silver table's data: `rows` orders, and the change sets (which keys, what values)."""

    rows: int
    changes: int
    seed: int

    @property
    def new_keys(self) -> int:
        return round(self.changes * NEW_SHARE)

    @property
    def updates(self) -> int:
        return self.changes - self.new_keys

    @property
    def changed_at_s(self) -> int:
        """When the changes were made: after every version the table holds."""
        return T0_S + (self.rows + self.new_keys) * ID_STEP_S + 8 * DAY_S

    def run_id(self, what: str) -> str:
        return str(uuid.uuid5(NAMESPACE, f"{what}-{self.rows}-{self.changes}-{self.seed}"))

    def values(self, ids: np.ndarray, *, changed: bool) -> dict[str, np.ndarray]:
        """Column values (numpy) for `ids`: as first loaded, or as changed (a later updated_at, a new status,
        amount and note; created_at and customer_id never change)."""
        h = _mix(ids, self.seed * 10 + (2 if changed else 1))
        created = T0_S + ids * ID_STEP_S
        updated = (self.changed_at_s + (h % np.uint64(3600)).astype(np.int64) if changed
                   else created + (h % np.uint64(7 * DAY_S)).astype(np.int64))
        return {
            "id": ids, "created_s": created, "updated_s": updated,
            "status": ((h >> np.uint64(20)) % np.uint64(len(STATUSES))).astype(np.int64),
            "cents": ((h >> np.uint64(24)) % np.uint64(1_000_000)).astype(np.int64),
            "customer_id": (_mix(ids, self.seed * 10 + 3) % np.uint64(2_000_000)).astype(np.int64) + 1,
            "door": ((h >> np.uint64(44)) % np.uint64(10_000)).astype(np.int64),
            "phone": (h % np.uint64(1_000_000_000)).astype(np.int64),
        }

    def table(self, ids: np.ndarray, *, changed: bool) -> pa.Table:
        """The orders of `ids` as an Arrow table of the data columns."""
        v = self.values(ids, changed=changed)
        ts = pa.timestamp("us", tz="UTC")
        unscaled = np.zeros(2 * len(ids), dtype=np.int64)  # decimal128: 16 little-endian bytes, all >= 0 here
        unscaled[0::2] = v["cents"]
        amount = pa.Array.from_buffers(pa.decimal128(12, 2), len(ids), [None, pa.py_buffer(unscaled)])
        note = pc.binary_join_element_wise(
            "Leave at door ", pc.utf8_lpad(pa.array(v["door"]).cast(pa.string()), 4, "0"), ", call ",
            pc.utf8_lpad(pa.array(v["phone"]).cast(pa.string()), 9, "0"), " first", "")
        return pa.table({
            "id": pa.array(ids, pa.int64()),
            "created_at": pa.array(v["created_s"] * 1_000_000).cast(ts),
            "updated_at": pa.array(v["updated_s"] * 1_000_000).cast(ts),
            "status": pa.array(STATUSES, pa.string()).take(pa.array(v["status"])),
            "amount": amount,
            "customer_id": pa.array(v["customer_id"], pa.int64()),
            "note": note,
        })

    def changed_ids(self, spread: str) -> tuple[np.ndarray, np.ndarray]:
        """The updated keys (among the newest `RECENT_SHARE` of the table, or uniform over all of it) and the
        new keys."""
        rng = np.random.default_rng([self.seed, 0 if spread == "recent" else 1])
        low = 0 if spread == "uniform" else self.rows - max(self.updates, round(self.rows * RECENT_SHARE))
        updated = np.sort(rng.choice(self.rows - low, self.updates, replace=False) + low + 1).astype(np.int64)
        return updated, np.arange(self.rows + 1, self.rows + self.new_keys + 1, dtype=np.int64)

    def change_chunk(self, spread: str) -> pa.Table:
        """The changed rows as one bronze chunk, in the order an incremental extraction reads them."""
        updated, new = self.changed_ids(spread)
        data = self.table(np.concatenate([updated, new]), changed=True)
        data = data.take(np.argsort(data.column("updated_at").to_numpy(), kind="stable"))
        return bronze(data, run_id=self.run_id(f"changes-{spread}"), extracted_at_s=self.changed_at_s + 2 * 3600,
                      partitions=8)

    def build_chunks(self, chunk_rows: int) -> Iterator[pa.Table]:
        """The table's first load as bronze chunks of `chunk_rows`, oldest first."""
        for start in range(1, self.rows + 1, chunk_rows):
            ids = np.arange(start, min(start + chunk_rows, self.rows + 1), dtype=np.int64)
            yield bronze(self.table(ids, changed=False), run_id=self.run_id("build"),
                         extracted_at_s=self.changed_at_s - DAY_S, partitions=max(1, len(ids) // 250_000))

    def expected(self, spread: str, base: dict[str, Any]) -> dict[str, Any]:
        """The checks the table must pass after the changes: `base` (the built table's sums) less the
        updated keys' old rows, plus the changed rows."""
        updated, new = self.changed_ids(spread)
        old = totals(self.table(updated, changed=False))
        change = totals(self.table(np.concatenate([updated, new]), changed=True))
        out = {k: base[k] - old[k] + change[k] for k in ("rows", "sum_id", "sum_cents", "sum_customer_id",
                                                          "sum_updated_s", "sum_note_bytes")}
        out["status"] = {s: base["status"].get(s, 0) - old["status"].get(s, 0) + change["status"].get(s, 0)
                         for s in STATUSES}
        out.update(distinct_ids=out["rows"], min_id=1, max_id=self.rows + self.new_keys, deleted=0,
                   change_run_rows=self.changes)
        return out

    def sample(self, spread: str) -> dict[int, tuple[Any, ...]]:
        """Expected rows (data columns) of some updated, new and untouched keys."""
        updated, new = self.changed_ids(spread)
        rng = np.random.default_rng([self.seed, 7])
        pick_updated = rng.choice(updated, min(SAMPLE_KEYS, len(updated)), replace=False)
        pick_new = rng.choice(new, min(SAMPLE_KEYS, len(new)), replace=False)
        untouched = np.setdiff1d(rng.choice(self.rows, 2 * SAMPLE_KEYS, replace=False) + 1, updated)[:SAMPLE_KEYS]
        out: dict[int, tuple[Any, ...]] = {}
        for ids, changed in ((np.sort(np.concatenate([pick_updated, pick_new])), True), (np.sort(untouched), False)):
            for row in self.table(ids.astype(np.int64), changed=changed).to_pylist():
                out[row["id"]] = normalised(row)
        return out


def bronze(data: pa.Table, *, run_id: str, extracted_at_s: int, partitions: int) -> pa.Table:
    """`data` with the system columns a bronze chunk carries."""
    n = data.num_rows
    return (data
            .append_column("_ipai_run_id", pa.repeat(pa.scalar(run_id, pa.string()), n))
            .append_column("_ipai_extraction_id", pa.repeat(pa.scalar(str(uuid.uuid5(NAMESPACE, run_id))), n))
            .append_column("_ipai_partition", pa.array((np.arange(n) * partitions // max(n, 1)).astype(np.int32)))
            .append_column("_ipai_extracted_at",
                           pa.array(np.full(n, extracted_at_s * 1_000_000)).cast(pa.timestamp("us", tz="UTC"))))


def totals(data: pa.Table | pa.RecordBatch) -> dict[str, Any]:
    """Additive sums of an Arrow table (or record batch) of orders, as `expected` and the checks use them."""
    amount = pc.sum(data.column("amount")).as_py() or Decimal(0)
    updated = data.column("updated_at").cast("int64").to_numpy() // 1_000_000
    counts = pc.value_counts(data.column("status")).to_pylist()
    return {
        "rows": data.num_rows,
        "sum_id": int(np.sum(data.column("id").to_numpy(), dtype=np.int64)),
        "sum_cents": int(amount * 100),
        "sum_customer_id": int(np.sum(data.column("customer_id").to_numpy(), dtype=np.int64)),
        "sum_updated_s": int(np.sum(updated, dtype=np.int64)),
        "sum_note_bytes": int(pc.sum(pc.binary_length(data.column("note"))).as_py() or 0),
        "status": {c["values"]: c["counts"] for c in counts},
    }


def add_totals(into: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    if not into:
        return {**more, "status": dict(more["status"])}
    for k, v in more.items():
        if k == "status":
            for s, c in v.items():
                into["status"][s] = into["status"].get(s, 0) + c
        else:
            into[k] += v
    return into


def normalised(row: dict[str, Any]) -> tuple[Any, ...]:
    """A row's data columns as comparable values, whether read from Arrow or from Postgres."""
    return tuple(int(row[c].timestamp()) if c in ("created_at", "updated_at") else
                 Decimal(row[c]).quantize(Decimal("0.01")) if c == "amount" else row[c] for c in DATA_COLUMNS)


def copy_ready(rows: pa.Table) -> pa.RecordBatchReader:
    """`rows` as COPY takes them into a table the merge made: the run id as uuid (as the merge stages it),
    in 64k-row batches. The benchmark's own, so that the rewrite does not lean on the merge's internals."""
    i = rows.schema.get_field_index("_ipai_run_id")
    coded = pc.dictionary_encode(rows.column(i)).combine_chunks()
    raw = pa.array([None if v is None else uuid.UUID(v).bytes for v in coded.dictionary.to_pylist()], pa.binary(16))
    ids = pa.ExtensionArray.from_storage(pa.uuid(), raw.take(coded.indices))
    rows = rows.set_column(i, pa.field("_ipai_run_id", pa.uuid()), ids)
    return pa.RecordBatchReader.from_batches(rows.schema, rows.to_batches(max_chunksize=65_536))


def silver_target(*, delta_uri: str | None = None, postgres_url: str | None = None) -> Any:
    from layers.silver.target import SilverTarget

    return SilverTarget(table=TABLE, key=KEY, cursor=CURSOR, bronze_table=INSTANCE.bronze_table(STREAM),
                        delta_uri=delta_uri, quarantine_table=INSTANCE.quarantine_table(STREAM),
                        postgres_url=postgres_url, postgres_schema=SCHEMA,
                        bronze_postgres_schema=INSTANCE.schema("bronze"))


# -- the sides (each in a subprocess of its own) ----------------------------------------------------


def run_build(orders: Orders, chunk_rows: int, delta_uri: str | None, postgres_url: str | None,
              work: Path) -> dict[str, Any]:
    """Build the silver table(s) through `SilverMerger`, and write the change chunks for the sides."""
    import pyarrow.parquet as pq

    from layers.silver.merge import SilverMerger

    t0 = time.perf_counter()
    base: dict[str, Any] = {}
    with SilverMerger(silver_target(delta_uri=delta_uri, postgres_url=postgres_url),
                      run_id=orders.run_id("build")) as merger:
        for chunk in orders.build_chunks(chunk_rows):
            base = add_totals(base, totals(chunk))
            merger.merge(chunk, extraction_id=chunk.column("_ipai_extraction_id")[0].as_py())
    seconds = time.perf_counter() - t0
    for spread in ("recent", "uniform"):
        pq.write_table(orders.change_chunk(spread), work / f"changes-{spread}.parquet")
    return {"seconds": seconds, "base": base, "merged": merger.result.rows_merged}


def run_merge(chunk: pa.Table, *, delta_uri: str | None = None, postgres_url: str | None = None) -> dict[str, Any]:
    """The engine's merge of one chunk into one destination."""
    from layers.silver.merge import SilverMerger

    run_id = chunk.column("_ipai_run_id")[0].as_py()
    t0 = time.perf_counter()
    with SilverMerger(silver_target(delta_uri=delta_uri, postgres_url=postgres_url), run_id=run_id) as merger:
        merger.merge(chunk, extraction_id=chunk.column("_ipai_extraction_id")[0].as_py())
    return {"seconds": time.perf_counter() - t0, "merged": merger.result.rows_merged}


def run_delta_rewrite(chunk: pa.Table, uri: str) -> dict[str, Any]:
    """Read the whole table, add the chunk, keep the latest version per key, overwrite the table."""
    import polars as pl
    from deltalake import DeltaTable, write_deltalake

    from layers.silver.evolve import conform
    from layers.silver.merge import prepare, version_columns

    t0 = time.perf_counter()
    steps: dict[str, float] = {}
    current = DeltaTable(uri).to_pyarrow_table()
    steps["read"] = time.perf_counter() - t0
    rows, _ = prepare(chunk, silver_target(delta_uri=uri))  # as the merge prepares it: same rows, same hash
    rows, _, _ = conform(rows, current.schema, key=KEY)
    rows = rows.select(current.schema.names).cast(current.schema)
    versions = version_columns(current.schema.names, CURSOR, KEY)
    frames = [pl.from_arrow(current), pl.from_arrow(rows)]
    del current
    both = pl.concat([f for f in frames if isinstance(f, pl.DataFrame)], rechunk=False)
    del frames
    # Tried: silver's rows anti-joined with the chunk's winners, plus the winners: ~0.4 s faster at 5M rows
    # (under 5% of the rewrite), but it leaves the table out of key order; the sort keeps it as it was built.
    latest = (both.sort([*KEY, *versions], nulls_last=False)
              .unique(subset=list(KEY), keep="last", maintain_order=True))
    del both
    steps["latest per key"] = time.perf_counter() - t0 - steps["read"]
    table = latest.to_arrow()
    del latest
    write_deltalake(uri, table, mode="overwrite")
    steps["write"] = time.perf_counter() - t0 - sum(steps.values())
    return {"seconds": time.perf_counter() - t0, "merged": rows.num_rows,
            "steps": {k: round(v, 1) for k, v in steps.items()}}


def run_postgres_rewrite(chunk: pa.Table, url: str) -> dict[str, Any]:
    """In one transaction: COPY the chunk into a temporary table, fill a new table with the union of silver
    and the chunk, the latest version per key (`distinct on`), add the primary key, swap the tables."""
    import adbc_driver_postgresql.dbapi as adbc

    from layers.silver.evolve import conform
    from engine.core.sql import quote_ident
    from layers.silver.merge import prepare, version_columns
    from layers.silver.postgres import PostgresSilverTable

    t0 = time.perf_counter()
    steps: dict[str, float] = {}
    pg = PostgresSilverTable(url, SCHEMA, TABLE, KEY)
    declared = pg.schema()
    pg.close()
    rows, _ = prepare(chunk, silver_target(postgres_url=url))  # as the merge prepares it
    rows, _, _ = conform(rows, declared, key=KEY)
    name, new, stage = f"{SCHEMA}.{TABLE}", f"{SCHEMA}.{TABLE}_rewrite", "_ipai_rewrite_in"
    cols = ", ".join(quote_ident(c) for c in rows.column_names)
    keys = ", ".join(quote_ident(k) for k in KEY)
    latest = ", ".join(f"{quote_ident(v)} desc nulls last" for v in version_columns(rows.column_names, CURSOR, KEY))
    with adbc.connect(url) as conn, conn.cursor() as cur:
        cur.adbc_ingest(stage, copy_ready(rows), mode="create", temporary=True)
        steps["copy"] = time.perf_counter() - t0
        cur.execute(f"create table {new} (like {name} including defaults including constraints)")
        # Tried: keeping silver's rows that no newer chunk row replaces (`not exists`) plus the chunk's
        # winners, `union all`: 10-15% slower than this sort at 5M rows.
        cur.execute(f"insert into {new} ({cols}) select distinct on ({keys}) {cols} from"
                    f" (select {cols} from {name} union all select {cols} from pg_temp.{stage}) u"
                    f" order by {keys}, {latest}")
        steps["union, latest per key"] = time.perf_counter() - t0 - sum(steps.values())
        cur.execute(f"alter table {new} add primary key ({keys})")
        steps["primary key"] = time.perf_counter() - t0 - sum(steps.values())
        cur.execute(f"drop table {name}")
        cur.execute(f"alter table {new} rename to {quote_ident(TABLE)}")
        cur.execute(f"alter index {new}_pkey rename to {quote_ident(TABLE + '_pkey')}")
        conn.commit()
    steps["swap, commit"] = time.perf_counter() - t0 - sum(steps.values())
    return {"seconds": time.perf_counter() - t0, "merged": rows.num_rows,
            "steps": {k: round(v, 1) for k, v in steps.items()}}


def child_main(args: argparse.Namespace) -> None:
    work = Path(args.work)
    orders = Orders(args.rows, args.changes, args.seed)
    if args.child == "build":
        print_result(run_build(orders, args.build_chunk_rows, args.delta_uri, args.db_url, work))
        return
    import pyarrow.parquet as pq

    chunk = pq.read_table(work / f"changes-{'uniform' if args.child == DELTA_UNIFORM else 'recent'}.parquet")
    start_mib = psutil.Process().memory_full_info().pss / 2**20  # the process before its clock: imports, chunk
    if args.child in (DELTA_MERGE, DELTA_UNIFORM):
        out = run_merge(chunk, delta_uri=args.delta_uri)
    elif args.child == PG_MERGE:
        out = run_merge(chunk, postgres_url=args.db_url)
    elif args.child == DELTA_REWRITE:
        out = run_delta_rewrite(chunk, args.delta_uri)
    else:
        out = run_postgres_rewrite(chunk, args.db_url)
    out.update(start_mib=start_mib, chunk_mib=chunk.nbytes / 2**20)
    print_result(out)


# -- measuring --------------------------------------------------------------------------------------


@dataclass
class Measured:
    side: str
    changes: int
    seconds: float
    start_mib: float
    """The side's process at its clock's start: interpreter, imports and the chunk read."""
    chunk_mib: float
    steps: dict[str, Any]
    usage: Usage
    notes: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.changes / self.seconds if self.seconds else 0.0

    @property
    def own_mib(self) -> float:
        """What the work itself added to the process tree's memory at its peak."""
        return max(0.0, self.usage.peak_mib - self.start_mib)


@dataclass(frozen=True)
class Setup:
    """What the sides share: the data, the built tables, the admin URL and the work folder."""

    orders: Orders
    admin_url: str
    work: Path
    base_database: str
    base: dict[str, Any]
    """Sums of the built table, from which each side's expected sums follow."""

    @property
    def base_delta(self) -> Path:
        return self.work / "base-delta"


def side_command(side: str, setup: Setup, *, delta_uri: str | None, db_url: str | None,
                 extra: tuple[str, ...] = ()) -> list[str]:
    return child_command(__file__, side, "--rows", str(setup.orders.rows), "--changes", str(setup.orders.changes),
                         "--seed", str(setup.orders.seed), "--work", str(setup.work),
                         *(["--delta-uri", delta_uri] if delta_uri else []), *(["--db-url", db_url] if db_url else []),
                         *extra)


def build(setup: Setup, args: argparse.Namespace, *, delta: bool, postgres: bool) -> dict[str, Any]:
    """Build the silver table(s) through the engine's merger, outside every clock; vacuum Postgres."""
    import psycopg

    from engine.controlplane.db import with_database

    db_url = with_database(setup.admin_url, setup.base_database) if postgres else None
    proc = start_child(side_command("build", setup, delta_uri=str(setup.base_delta) if delta else None, db_url=db_url,
                                    extra=("--build-chunk-rows", str(args.build_chunk_rows))))
    out, err = proc.communicate()
    result = child_result("build", proc, out, err)
    if db_url:
        with psycopg.connect(db_url, autocommit=True) as conn:
            t0 = time.perf_counter()
            conn.execute(f"vacuum (freeze, analyze) {SCHEMA}.{TABLE}")  # type: ignore[arg-type]
            result["vacuum_s"] = time.perf_counter() - t0
            size = conn.execute(f"select pg_size_pretty(pg_total_relation_size('{SCHEMA}.{TABLE}')),"
                                f" pg_size_pretty(pg_relation_size('{SCHEMA}.{TABLE}'))").fetchone()
            result["postgres_size"] = f"{size[0]} ({size[1]} heap)" if size else "?"
    if delta:
        from deltalake import DeltaTable

        files = pa.table(DeltaTable(str(setup.base_delta)).get_add_actions(flatten=True)).to_pydict()
        result["delta_files"] = len(files["path"])
        result["delta_size"] = f"{sum(files['size_bytes']) / 2**20:,.0f} MiB"
    return result


def measure(side: str, setup: Setup) -> tuple[Measured, dict[str, Any], dict[int, tuple[Any, ...]]]:
    """Run one side on its own copy of the built table, in a subprocess whose process tree is sampled; return
    what it measured and what the table holds afterwards (read outside the clock)."""
    delta = side in (DELTA_MERGE, DELTA_REWRITE, DELTA_UNIFORM)
    spread = "uniform" if side == DELTA_UNIFORM else "recent"
    copy = setup.work / "side-delta"
    name = f"{setup.base_database}_{uuid.uuid4().hex[:6]}"
    notes: list[str] = []
    if delta:
        shutil.copytree(setup.base_delta, copy)
    try:
        # A Delta side gets no database, only the checkpoint: the previous side's WAL is not flushed during it.
        with database(setup.admin_url, name, create=not delta, template=setup.base_database) as db_url:
            cmd = side_command(side, setup, delta_uri=str(copy) if delta else None, db_url=None if delta else db_url)
            result, usage = run_measured(side, cmd, database="" if delta else name)
            sample_ids = sorted(setup.orders.sample(spread))
            if delta:
                state, rows = delta_state(str(copy), setup.orders.run_id(f"changes-{spread}"), sample_ids)
                if side != DELTA_REWRITE:
                    notes.append(delta_merge_metrics(str(copy)))
            else:
                state, rows = postgres_state(db_url, setup.orders.run_id(f"changes-{spread}"), sample_ids)
                if side == PG_MERGE:
                    try:
                        notes.append(explain_merge(db_url, setup.work / "changes-recent.parquet"))
                    except Exception as exc:  # the plan is a detail: a changed merger must not lose the run's figures
                        notes.append(f"Postgres MERGE plan unavailable: {type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    m = Measured(side, setup.orders.changes, result["seconds"], result["start_mib"], result["chunk_mib"],
                 result.get("steps", {}), usage, notes)
    return m, state, rows


# -- checking what the sides left -------------------------------------------------------------------


def delta_state(uri: str, run_id: str, sample_ids: list[int]) -> tuple[dict[str, Any], dict[int, tuple[Any, ...]]]:
    """The checks' sums over the whole Delta table, and the rows of `sample_ids`."""
    from deltalake import DeltaTable

    dataset = DeltaTable(uri).to_pyarrow_dataset()
    sums: dict[str, Any] = {}
    ids, deleted, change_run_rows = [], 0, 0
    for batch in dataset.to_batches(columns=[*DATA_COLUMNS, "_ipai_deleted", "_ipai_run_id"]):
        if batch.num_rows == 0:
            continue
        sums = add_totals(sums, totals(batch))
        ids.append(batch.column("id").to_numpy())
        deleted += int(pc.sum(batch.column("_ipai_deleted").cast("int64")).as_py() or 0)
        change_run_rows += int(pc.sum(pc.equal(batch.column("_ipai_run_id"), run_id).cast("int64")).as_py() or 0)
    every = np.concatenate(ids)
    sums.update(distinct_ids=len(np.unique(every)), min_id=int(every.min()), max_id=int(every.max()), deleted=deleted,
                change_run_rows=change_run_rows)
    sample = dataset.to_table(filter=pc.field("id").isin(sample_ids), columns=list(DATA_COLUMNS)).to_pylist()
    return sums, {r["id"]: normalised(r) for r in sample}


def postgres_state(url: str, run_id: str, sample_ids: list[int]) -> tuple[dict[str, Any], dict[int, tuple[Any, ...]]]:
    """The checks' sums over the whole Postgres table (distinct keys from its primary key), and sample rows."""
    import psycopg

    name = f"{SCHEMA}.{TABLE}"
    with psycopg.connect(url) as conn:
        (rows, low, high, sum_id, amount, customers, updated, notes, deleted, change_run_rows) = conn.execute(
            f"select count(*), min(id), max(id), sum(id), sum(amount), sum(customer_id),"
            f" sum(extract(epoch from updated_at)::bigint), sum(octet_length(note)),"
            f" count(*) filter (where _ipai_deleted), count(*) filter (where _ipai_run_id::text = %s) from {name}",
            (run_id,)).fetchone()  # type: ignore[arg-type,misc]
        by_status = f"select status, count(*) from {name} group by status"
        status: dict[str, int] = dict(conn.execute(by_status).fetchall())  # type: ignore[arg-type]
        has_key = conn.execute("select count(*) from pg_index where indrelid = %s::regclass and indisprimary",
                               (name,)).fetchone()[0]  # type: ignore[index]
        distinct = rows
        if not has_key:
            count_ids = f"select count(distinct id) from {name}"
            distinct = conn.execute(count_ids).fetchone()[0]  # type: ignore[arg-type,index]
        by_id = f"select {', '.join(DATA_COLUMNS)} from {name} where id = any(%s)"
        sample = conn.execute(by_id, (sample_ids,)).fetchall()  # type: ignore[arg-type]
    sums = {"rows": rows, "sum_id": int(sum_id), "sum_cents": int(amount * 100), "sum_customer_id": int(customers),
            "sum_updated_s": int(updated), "sum_note_bytes": int(notes), "status": status, "distinct_ids": distinct,
            "min_id": low, "max_id": high, "deleted": deleted, "change_run_rows": change_run_rows,
            "primary_key": bool(has_key)}
    return sums, {r[0]: normalised(dict(zip(DATA_COLUMNS, r))) for r in sample}


def check(side: str, state: dict[str, Any], rows: dict[int, tuple[Any, ...]], expected: dict[str, Any],
          sample: dict[int, tuple[Any, ...]]) -> list[str]:
    """What differs from what the table must hold (nothing: an empty list)."""
    wrong = [f"{k}: {state.get(k)!r}, expected {v!r}" for k, v in expected.items() if state.get(k) != v]
    if state.get("primary_key") is False:
        wrong.append("the table has no primary key")
    missing = sorted(set(sample) - set(rows))
    if missing:
        wrong.append(f"{len(missing)} sampled keys missing, e.g. {missing[:3]}")
    differ = [k for k in sample if k in rows and rows[k] != sample[k]]
    if differ:
        wrong.append(f"{len(differ)} of {len(sample)} sampled rows differ, e.g. {rows[differ[0]]} instead of"
                     f" {sample[differ[0]]}")
    return [f"{side}: {w}" for w in wrong]


def delta_merge_metrics(uri: str) -> str:
    """What delta-rs says its last MERGE did (from the commit in the Delta log)."""
    from deltalake import DeltaTable

    commit = DeltaTable(uri).history(1)[0]
    m = commit.get("operationMetrics", {})
    # Not num_target_files_scanned / _skipped_during_scan: delta-rs 1.6 reports 0 and all files whatever it read.
    keys = ("num_target_files_removed", "num_target_files_added", "num_target_rows_copied", "num_target_rows_updated",
            "num_target_rows_inserted", "num_source_rows", "scan_time_ms", "rewrite_time_ms", "execution_time_ms")
    return f"delta-rs {commit.get('operation')} metrics: " + ", ".join(f"{k} {m.get(k)}" for k in keys if k in m)


class _Explaining:
    """A cursor that runs EXPLAIN for each MERGE given, keeping the plans, and any other statement as it is
    (what the merge does before its MERGE, such as analysing the staged rows, shapes the plan)."""

    def __init__(self, cur: Any) -> None:
        self.cur = cur
        self.plans: list[list[str]] = []

    def execute(self, sql: str, params: Any = None) -> None:
        if not sql.lstrip().upper().startswith("MERGE"):
            self.cur.execute(sql, params)
            return
        # ADBC wraps a query in COPY to fetch its result, which EXPLAIN cannot be in.
        self.cur.adbc_statement.set_options(**{"adbc.postgresql.use_copy": "false"})
        self.cur.execute(f"EXPLAIN {sql}", params)
        self.plans.append([r[0] for r in self.cur.fetchall()])


def explain_merge(url: str, chunk_path: Path) -> str:
    """The plan PostgreSQL picks for the merge's MERGE statement (EXPLAIN without running it): the chunk is
    staged as the merge stages it, and `PostgresSilverTable._merge` writes the statement, rolled back."""
    import pyarrow.parquet as pq

    from layers.silver.evolve import conform
    from layers.silver.merge import prepare, version_columns
    from layers.silver.postgres import STAGE, PostgresSilverTable

    pg = PostgresSilverTable(url, SCHEMA, TABLE, KEY)
    try:
        rows, _ = prepare(pq.read_table(chunk_path), silver_target(postgres_url=url))
        rows, _, _ = conform(rows, pg.schema(), key=KEY)
        conn = pg._connection()
        with conn.cursor() as cur:
            cur.adbc_ingest(STAGE, copy_ready(rows), mode="create", temporary=True)
            explaining = _Explaining(cur)
            # The statement itself, as the merge builds it (a private method: the benchmark must show the plan of
            # exactly what runs).
            pg._merge(explaining, rows, list(rows.column_names),  # type: ignore[arg-type]
                      version_columns(rows.column_names, CURSOR, KEY))
        conn.rollback()
    finally:
        pg.close()
    plan = explaining.plans[-1]
    return "Postgres MERGE plan: " + " / ".join(line.strip() for line in plan if line.strip())


# -- reporting --------------------------------------------------------------------------------------


def table(results: dict[str, Measured]) -> str:
    lines = ["| side | changed rows | seconds | changed rows/s | peak memory (MiB) | own memory (MiB) |"
             " time vs rewrite | memory vs rewrite |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for side in SIDES:
        m = results.get(side)
        if m is None:
            continue
        rewrite = results.get(REWRITE_OF.get(side, side))
        time_x = f"{m.seconds / rewrite.seconds:.0%}" if rewrite else "-"
        mem_x = f"{m.usage.peak_mib / rewrite.usage.peak_mib:.0%}" if rewrite else "-"
        busy = " (busy machine)" if m.usage.machine_busy else ""
        lines.append(f"| {m.side}{busy} | {m.changes:,} | {m.seconds:.1f} | {m.rows_per_second:,.0f} |"
                     f" {m.usage.peak_mib:,.0f} | {m.own_mib:,.0f} | {time_x} | {mem_x} |")
    return "\n".join(lines)


def verdicts(results: dict[str, Measured], table_mib: float) -> list[tuple[bool | None, str]]:
    out: list[tuple[bool | None, str]] = []
    for merge, rewrite in ((DELTA_MERGE, DELTA_REWRITE), (PG_MERGE, PG_REWRITE)):
        m, r = results.get(merge), results.get(rewrite)
        if m is None or r is None:
            continue
        share = m.seconds / r.seconds
        out.append((share <= SPEED_TARGET, f"{merge}: {m.seconds:.1f} s, {share:.0%} of the rewrite's {r.seconds:.1f} s"
                    f" (target <= {SPEED_TARGET:.0%})"))
    for merge, rewrite in ((DELTA_MERGE, DELTA_REWRITE), (PG_MERGE, PG_REWRITE)):
        m, r = results.get(merge), results.get(rewrite)
        if m is None:
            continue
        limit = MEMORY_TABLE_SHARE * table_mib
        vs_rewrite = (f"; peak {m.usage.peak_mib:,.0f} MiB against the rewrite's {r.usage.peak_mib:,.0f} MiB"
                      if r else "")
        server = " (client side: PostgreSQL's own work, in the server, is not counted)" if merge == PG_MERGE else ""
        out.append((m.own_mib <= limit, f"{merge} memory: {m.own_mib:,.0f} MiB above the process at its start,"
                    f" {m.own_mib / m.chunk_mib:.1f}x the changed rows' {m.chunk_mib:,.0f} MiB in Arrow, against the"
                    f" table's ~{table_mib:,.0f} MiB (target: under {MEMORY_TABLE_SHARE:.0%} of the table,"
                    f" {limit:,.0f} MiB){vs_rewrite}{server}"))
    return out


def detail(m: Measured) -> str:
    u = m.usage
    steps = ", ".join(f"{k} {v} s" for k, v in m.steps.items())
    return (f"{m.side}: {m.changes:,} changed rows in {m.seconds:.1f} s ({u.wall_seconds:.1f} s with process start"
            f" and reading the chunk){'; ' + steps if steps else ''}; {u.peak()}, {m.start_mib:,.0f} MiB at the clock's"
            f" start (the chunk {m.chunk_mib:,.0f} MiB); {u.at_peak(4)}; {u.cpu_seconds(by_process=False)}"
            + "".join(f"\n    {n}" for n in m.notes))


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--rows", type=int, default=20_000_000, help="rows in the silver table")
    parser.add_argument("--changes", type=int, default=1_000_000, help="changed rows merged (80%% updates, 20%% new)")
    parser.add_argument("--build-chunk-rows", type=int, help="rows per chunk when building the table through the"
                        " merger (default: the engine's chunk_rows, 1,000,000, or a 20th of --rows if less)")
    parser.add_argument("--only", choices=["delta", "postgres"], help="one destination only")
    parser.add_argument("--no-uniform", action="store_true", help="skip the worst case (Delta, uniform keys)")
    parser.add_argument("--seed", type=int, default=7)
    add_wait_idle(parser, before_each="side")
    add_database_url(parser)
    add_child_arguments(parser, ["build", *SIDES])
    parser.add_argument("--delta-uri", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return
    if not 0 < args.changes <= args.rows:
        parser.error("--changes must be between 1 and --rows")
    if args.build_chunk_rows is None:
        from layers.silver.target import CHUNK_ROWS

        args.build_chunk_rows = min(CHUNK_ROWS, max(1, args.rows // 20))

    import psycopg

    delta, postgres = args.only != "postgres", args.only != "delta"
    sides = [s for s in SIDES if (delta if s.startswith("Delta") else postgres)
             and not (s == DELTA_UNIFORM and args.no_uniform)]
    orders = Orders(args.rows, args.changes, args.seed)
    admin, server = admin_database(args.database_url)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="ipai-bench-silver-"))
    free = shutil.disk_usage(work).free
    need = args.rows * ((70 * 3 if delta else 0) + (230 * 3 if postgres else 0))  # bytes a row, three copies at most
    if free < need:
        raise SystemExit(f"{free / 2**30:.1f} GiB free under {work.parent}, ~{need / 2**30:.1f} GiB needed")
    base_database = f"ipai_bench_silver_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'create database "{base_database}"')  # type: ignore[arg-type]
    results: dict[str, Measured] = {}
    details: list[str] = []
    measures: set[str] = set()
    try:
        setup = Setup(orders, admin, work, base_database, {})
        where = ", ".join(d for d, on in (("Delta", delta), ("Postgres", postgres)) if on)
        print(f"building the silver table: {args.rows:,} orders through SilverMerger in chunks of"
              f" {args.build_chunk_rows:,} ({where}) ...", flush=True)
        built = build(setup, args, delta=delta, postgres=postgres)
        setup = Setup(orders, admin, work, base_database, built["base"])
        header = (f"silver table: {args.rows:,} orders (id bigint key, created_at, updated_at the cursor, status,"
                  f" amount decimal(12,2), customer_id, a ~40-byte note), built through SilverMerger in chunks of"
                  f" {args.build_chunk_rows:,} in {built['seconds']:.0f} s"
                  + (f"; Delta {built['delta_size']} in {built['delta_files']} files" if delta else "")
                  + (f"; Postgres {built['postgres_size']}, vacuumed (freeze, analyze)" if postgres else "")
                  + f". Changes: one bronze chunk of {args.changes:,} rows in cursor order: {orders.updates:,} updates"
                  f" of keys among the newest {RECENT_SHARE:.0%} of the table (new updated_at, status, amount, note)"
                  f" and {orders.new_keys:,} new keys; worst case: the same with the updated keys uniform over the"
                  f" table. Postgres: {describe_server(admin, server)}; {os.cpu_count()} CPUs.")
        print(header, flush=True)
        expected = {s: orders.expected(s, setup.base) for s in ("recent", "uniform")}
        states: dict[str, dict[str, Any]] = {}
        for side in sides:
            wait_idle(args.wait_idle)
            m, state, rows = measure(side, setup)
            spread = "uniform" if side == DELTA_UNIFORM else "recent"
            wrong = check(side, state, rows, expected[spread], orders.sample(spread))
            for other, seen in states.items():
                same = {k: v for k, v in seen.items() if k != "primary_key"}
                if spread == "recent" and other != DELTA_UNIFORM and same != {k: v for k, v in state.items()
                                                                              if k != "primary_key"}:
                    wrong.append(f"{side} and {other} disagree: {state} against {seen}")
            if wrong:
                raise SystemExit("WRONG RESULT:\n" + "\n".join(wrong))
            states[side] = state
            measures.add(m.usage.measure)
            results[side] = m
            details.append(detail(m) + f"; checked: {state['rows']:,} rows, {state['change_run_rows']:,} with the"
                           f" change's run id, {len(rows):,} sampled rows equal")
            print(details[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{base_database}" with (force)')  # type: ignore[arg-type]
    chunk_mib = next(iter(results.values())).chunk_mib
    table_mib = chunk_mib * args.rows / args.changes
    minutes = (time.perf_counter() - started) / 60
    memory = measure_note(measures)
    uniform = results.get(DELTA_UNIFORM)
    rewrite = results.get(DELTA_REWRITE)
    worst = (f" Worst case (not a target): {DELTA_UNIFORM} took {uniform.seconds:.1f} s"
             + (f", {uniform.seconds / rewrite.seconds:.0%} of the Delta rewrite (whose cost does not depend on which"
                " keys changed: it reads and writes the whole table either way)." if rewrite else ".")
             if uniform else "")
    note = (f"seconds: inside the side's process, from the merge's (or rewrite's) start to its commit; changed rows/s:"
            f" the chunk's {args.changes:,} rows over those seconds. Peak memory: {memory}, sampled every"
            f" {SAMPLE_S} s over the side's process tree; own memory: the peak less the process at its clock's start"
            f" (interpreter, imports, the chunk). The PostgreSQL server is left out: the Postgres sides' work runs"
            f" there. Every side's table was checked afterwards (row count, distinct keys, sums, a sample of"
            f" {3 * SAMPLE_KEYS:,} keys row by row) and Delta and Postgres agree.{worst}")
    print_and_write("bench_silver", intro=f"{header} {minutes:.1f} minutes in all.", report=table(results), note=note,
                    checks=verdicts(results, table_mib), details=details, minutes=minutes)
    if server is not None:
        del server


if __name__ == "__main__":
    main()
