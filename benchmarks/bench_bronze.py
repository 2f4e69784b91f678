"""Bronze throughput and memory: the engine side by side with the raw single-process floor.

    python benchmarks/bench_bronze.py                          # 5,000,000 rows
    python benchmarks/bench_bronze.py --rows-list 1000000,5000000 --repeat 2

For each size, two runs, one after the other (never at once: they would share the machine's cores),
each in its own subprocess so its memory is measured on its own:

  floor   one plain Python process: `connectors.sample.Shop` generates the same Arrow data over the
          same id ranges the spec's partitions cover; every `commit_rows` rows are written with
          `deltalake.write_deltalake(mode="append")` and loaded with ADBC `adbc_ingest(create_append)`
          in one transaction. No Ray, no control plane, no system columns, no idempotency markers.
  engine  `engine.run.driver.run_sync` on the equivalent `sample` spec (sync_mode full, all three streams),
          starting its own local Ray, into a fresh database and a fresh lakehouse folder.

`--warm-ray` adds a third run: the engine with Ray started before its clock (as after `ipai ray start`).

Peak memory is the largest sum, over samples every 0.2 s, of the memory of the measured subprocess and
every process it started (Ray's gcs_server, raylet, agents and workers; any process naming the run's
Ray session folder is added even if it is not a descendant). PSS is summed where the kernel reports it,
so pages shared between processes (Ray's object store, shared libraries) are counted once; RSS
otherwise. The PostgreSQL server is shared by both runs and left out.

The table is printed and written to `benchmarks/results/bench_bronze-<timestamp>.md`. Targets, checked
at the end: engine rows/s >= 60% of the floor's; engine peak memory < 4 GiB at 5M rows; and peak
memory growing less than linearly with rows (needs two sizes or more).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the engine lives at the repo root

from benchmarks.common import (  # noqa: E402 - needs the repo root on sys.path
    SAMPLE_S, Usage, add_child_arguments, add_database_url, add_wait_idle, admin_database, bench_parser,
    child_command, child_env, delta_rows, describe_server, fastest, fresh_database, measure_note, print_and_write,
    print_result, run_measured, sync_timed, wait_idle,
)

WARM = "engine, Ray up"
"""The optional third run: the engine with Ray started before its clock, as a long-lived cluster would be."""
SPEED_TARGET = 0.60
MEMORY_LIMIT_MIB = 4096
MEMORY_LIMIT_AT_ROWS = 5_000_000
SPEC_TEMPLATE = """\
name: bench
source_type: sample
sync_mode: full
source:
  seed: {seed}
  days: 30
  customers: {customers}
  orders: {orders}
  partition_rows: {partition_rows}
tuning:
  commit_rows: {commit_rows}
"""


# -- what is run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """Sample sizes whose three streams sum to about `rows` (order lines average 2.5 per order)."""

    rows: int
    seed: int
    partition_rows: int
    commit_rows: int

    @property
    def customers(self) -> int:
        return max(1, self.rows // 8)

    @property
    def orders(self) -> int:
        return max(1, round((self.rows - self.customers) / 3.5))

    def spec_text(self) -> str:
        return SPEC_TEMPLATE.format(seed=self.seed, customers=self.customers, orders=self.orders,
                                    partition_rows=self.partition_rows, commit_rows=self.commit_rows)


def run_floor(shape: Shape, db_url: str, lakehouse: Path) -> dict[str, Any]:
    """Generate, write to Delta and load into Postgres in one thread, `commit_rows` rows per commit."""
    import adbc_driver_postgresql.dbapi as adbc
    import pyarrow as pa
    from deltalake import write_deltalake

    from connectors.sample import streams
    from engine.core.protocol import PlanContext
    from connectors.specload import parse_spec
    from layers.postgres import COPY_BATCH_ROWS

    t0 = time.perf_counter()
    spec = parse_spec(shape.spec_text())
    rows = 0
    with adbc.connect(db_url) as conn, conn.cursor() as cur:
        for stream in streams(spec):  # type: ignore[arg-type]
            shop = stream.shop
            generate = {"customers": shop.customers_batch, "orders": shop.orders_batch,
                        "order_lines": shop.lines_batch}[stream.name]
            table = f"raw_bench_{stream.name}"
            plan = stream.plan(PlanContext(sync_mode="full", cursor=None, run_started_at=datetime.now()))
            chunk: list[pa.RecordBatch] = []

            def commit() -> None:
                data = pa.Table.from_batches(chunk)
                write_deltalake(str(lakehouse / table), data, mode="append")
                # COPY batches of the engine's size: the driver encodes a whole batch before sending it.
                batches = data.to_batches(max_chunksize=COPY_BATCH_ROWS)
                cur.adbc_ingest(table, pa.RecordBatchReader.from_batches(data.schema, batches), mode="create_append")
                conn.commit()
                chunk.clear()

            for partition in plan.partitions:
                where = dict(partition.where)
                chunk.append(generate(where["ids_from"], where["ids_to"]))
                rows += chunk[-1].num_rows
                if sum(b.num_rows for b in chunk) >= shape.commit_rows:
                    commit()
            if chunk:
                commit()
    return {"rows": rows, "seconds": time.perf_counter() - t0}


def run_engine(shape: Shape, db_url: str, lakehouse: Path, home: Path, *, warm: bool = False) -> dict[str, Any]:
    """Run one full sync of the sample spec with the engine, on a local Ray it starts itself (before the
    clock starts when `warm`, as a long-lived Ray would be)."""
    from engine.controlplane.settings import Settings

    settings = Settings(home=home, database_url=db_url, lakehouse_uri=str(lakehouse), ray_address=None)
    result, seconds = sync_timed(shape.spec_text(), db_url=db_url, settings=settings, warm=warm)
    return {"rows": result.rows, "seconds": seconds, "rows_by_stream": result.rows_by_stream}


def child_main(args: argparse.Namespace) -> None:
    shape = Shape(args.rows, args.seed, args.partition_rows, args.commit_rows)
    work = Path(args.work)
    if args.child == "floor":
        out = run_floor(shape, args.db_url, work / "lakehouse")
    else:
        out = run_engine(shape, args.db_url, work / "lakehouse", work / "home", warm=args.child == WARM)
    print_result(out)


# -- measuring --------------------------------------------------------------------------------------


@dataclass
class Measured:
    run: str
    rows: int
    seconds: float
    delta_rows: int
    postgres_rows: int
    usage: Usage

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds


def measure(run: str, shape: Shape, admin_url: str) -> Measured:
    """Run one side in a subprocess against a fresh database and lakehouse; drop both afterwards."""
    work = Path(tempfile.mkdtemp(prefix=f"ipai-bench-{run.replace(', ', '-').replace(' ', '-')}-"))
    try:
        with fresh_database(admin_url) as (name, db_url):
            cmd = child_command(__file__, run, "--rows", str(shape.rows), "--seed", str(shape.seed),
                                "--partition-rows", str(shape.partition_rows), "--commit-rows", str(shape.commit_rows),
                                "--db-url", db_url, "--work", str(work))
            result, usage = run_measured(run, cmd, env=child_env(), database=name)
            delta, pg_rows = _count(work / "lakehouse", db_url)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Measured(run, result["rows"], result["seconds"], delta, pg_rows, usage)


def _count(lakehouse: Path, db_url: str) -> tuple[int, int]:
    """Return the rows in the run's bronze Delta tables and bronze Postgres tables (outside the timing)."""
    import psycopg

    delta = sum(delta_rows(path.parent) for path in sorted(lakehouse.glob("**/_delta_log")))
    pg = 0
    with psycopg.connect(db_url) as conn:
        tables = conn.execute("select table_schema, table_name from information_schema.tables"
                              " where table_name like 'raw\\_bench\\_%'").fetchall()
        for schema, table in tables:
            pg += conn.execute(f'select count(*) from "{schema}"."{table}"').fetchone()[0]  # type: ignore[index]
    return delta, pg


# -- reporting --------------------------------------------------------------------------------------


def table(results: list[list[Measured]]) -> str:
    lines = ["| run | rows | seconds | rows/s | peak memory (MiB) | ratio vs floor (rows/s) | memory vs floor |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for floor, *others in results:
        for m in (floor, *others):
            speed = m.rows_per_second / floor.rows_per_second
            peak = m.usage.peak_mib
            lines.append(f"| {m.run} | {m.rows:,} | {m.seconds:.1f} | {m.rows_per_second:,.0f} | {peak:,.0f}"
                         f" | {speed:.2f} | {peak / floor.usage.peak_mib:.1f}x |")
    return "\n".join(lines)


def verdicts(results: list[list[Measured]]) -> list[tuple[bool | None, str]]:
    """Check the targets on the floor and engine runs, and the speed target on the warm-Ray run too.

    The floor pays for no server start (Postgres is up for both sides); the warm-Ray run is the engine
    on the same footing (Ray up, as after `ipai ray start` or on a cluster), the plain engine run pays
    for starting Ray inside its clock. Both verdicts are printed.
    """
    out: list[tuple[bool | None, str]] = []
    for floor, engine, *warm in results:
        ratio = engine.rows_per_second / floor.rows_per_second
        out.append((ratio >= SPEED_TARGET, f"{engine.rows:,} rows: engine (starting its own Ray) at {ratio:.0%}"
                    f" of the floor's rows/s (target >= {SPEED_TARGET:.0%})"))
        for w in warm:
            ratio = w.rows_per_second / floor.rows_per_second
            out.append((ratio >= SPEED_TARGET, f"{w.rows:,} rows: engine with Ray up at {ratio:.0%}"
                        f" of the floor's rows/s (target >= {SPEED_TARGET:.0%})"))
        if engine.rows <= MEMORY_LIMIT_AT_ROWS * 1.01:
            out.append((engine.usage.peak_mib < MEMORY_LIMIT_MIB, f"{engine.rows:,} rows: engine peak memory "
                        f"{engine.usage.peak_mib:,.0f} MiB (target < {MEMORY_LIMIT_MIB:,} MiB up to 5M rows)"))
    engines = sorted((e for _, e, *_ in results), key=lambda m: m.rows)
    if len(engines) < 2:
        out.append((None, "memory growth with rows: not checked (give --rows-list with two sizes or more)"))
    for small, large in zip(engines, engines[1:]):
        rows_x, mem_x = large.rows / small.rows, large.usage.peak_mib / small.usage.peak_mib
        out.append((mem_x < rows_x, f"memory growth {small.rows:,} -> {large.rows:,} rows: x{mem_x:.2f} for"
                    f" x{rows_x:.2f} the rows (target: less than linear)"))
    for group in results:
        for m in group:
            if m.delta_rows != m.rows or m.postgres_rows != m.rows:
                out.append((False, f"{m.run} {m.rows:,} rows: Delta holds {m.delta_rows:,}, Postgres"
                            f" {m.postgres_rows:,}; both should equal the rows reported"))
    return out


def detail(m: Measured) -> str:
    u = m.usage
    return (f"{m.run} {m.rows:,} rows: {m.seconds:.1f} s ({u.wall_seconds:.1f} s with process start),"
            f" {m.rows_per_second:,.0f} rows/s, {u.peak(outside_tree=True)}; {u.at_peak()}; {u.cpu_seconds()}")


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--rows", type=int, default=5_000_000, help="total rows over the three streams")
    parser.add_argument("--rows-list", help="several totals, comma-separated (overrides --rows)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--partition-rows", type=int, default=250_000, help="sample partition_rows (per task)")
    parser.add_argument("--commit-rows", type=int, default=1_000_000, help="tuning.commit_rows (per commit)")
    add_database_url(parser)
    parser.add_argument("--only", choices=["floor", "engine"], help="run one side only (no ratio checks)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each side per size, alternating; the"
                        " fastest is reported, with the highest peak memory of all")
    add_wait_idle(parser)
    parser.add_argument("--warm-ray", action="store_true", help="also run the engine with Ray started before"
                        " its clock (a long-lived cluster); checked against the speed target too")
    add_child_arguments(parser, ["floor", "engine", WARM])
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return

    sizes = [int(s.replace("_", "")) for s in args.rows_list.split(",")] if args.rows_list else [args.rows]
    admin, server = admin_database(args.database_url)
    from engine.core.spec import redact_url

    print(f"postgres: {describe_server(admin, server)}; cpus: {os.cpu_count()};"
          f" partition_rows {args.partition_rows:,}, commit_rows {args.commit_rows:,}; {args.repeat} run(s) of"
          " each side per size, the fastest kept", flush=True)
    results: list[list[Measured]] = []
    runs = ("floor", "engine", WARM) if args.warm_ray else ("floor", "engine")
    measures: set[str] = set()
    details: list[str] = []
    for rows in sizes:
        shape = Shape(rows, args.seed, args.partition_rows, args.commit_rows)
        best: dict[str, Measured] = {}
        for attempt in range(args.repeat):
            for run in runs:
                if args.only and run != args.only:
                    continue
                wait_idle(args.wait_idle)
                m = measure(run, shape, admin)
                measures.add(m.usage.measure)
                details.append(detail(m))
                print(details[-1], flush=True)
                best[run] = fastest(best[run], m) if run in best else m
        group = [best[r] for r in runs if r in best]
        if len(group) >= 2:
            results.append(group)
    if not results:
        return
    memory = measure_note(measures)
    print_and_write(
        "bench_bronze",
        intro=f"Postgres: {redact_url(admin)}; {os.cpu_count()} CPUs; partition_rows {args.partition_rows:,};"
        f" commit_rows {args.commit_rows:,}; seed {args.seed}; {args.repeat} run(s) of each side per size, the"
        " fastest kept.", report=table(results),
        note=f"Memory measure: {memory}, sampled every {SAMPLE_S} s; PostgreSQL server processes left out.",
        printed_note=f"memory measure: {memory}; sampled every {SAMPLE_S} s over the run's whole process tree;"
        " the PostgreSQL server is left out (shared by both runs)",
        checks=verdicts(results), details=details)
    if server is not None:
        del server


if __name__ == "__main__":
    main()
