"""A Postgres table into bronze: the engine's `database` source against dlt's `sql_table` and the raw floor.

    python benchmarks/bench_sql.py                        # 5,000,000 rows
    python benchmarks/bench_sql.py --rows 500000 --warm-ray
    python benchmarks/bench_sql.py --only engine --partition-rows 250000 --source-database NAME

First a source table `public.orders` of `--rows` rows is made in a database of its own with
`generate_series` (bigint primary key, timestamptz, numeric(12,2), text, an enum, a boolean, a date, a
nullable text, a small jsonb), frozen and analysed, outside every clock. Then, one after the other (never at
once: the machine has two cores), each side runs in a subprocess of its own, against a fresh destination
database and a fresh work folder, and its process tree is measured:

  floor          one plain Python process, one thread, no Ray: ADBC reads the table as a stream of Arrow
                 batches; every `--commit-rows` rows are written with `deltalake.write_deltalake(append)`,
                 then loaded with ADBC `adbc_ingest(create_append)` and committed. Same column types as the
                 engine's bronze (numeric as decimal(12,2), jsonb as text); no system columns, no ledger.
  dlt sql_table  dlt's `sql_table(..., backend="pyarrow")` (SQLAlchemy over psycopg2) into the `filesystem`
                 destination with `table_format="delta"`: Delta only, no Postgres.
  engine         `engine.run.driver.run_sync` on a `database` spec (sync_mode full) into bronze Delta and bronze
                 Postgres, starting its own local Ray.

`--warm-ray` adds `engine, Ray up`: the same with Ray started before its clock (as after `ipai ray start`).
After each run (outside the timing) what landed is checked against the source: row count, distinct ids,
min and max id, and the sum of `amount`, in Delta and in Postgres. Peak memory is the largest summed PSS
of the side's process tree (Ray's processes and workers included), sampled every 0.2 s
(`benchmarks/common.py`); the PostgreSQL server is left out. Targets (issue 5): the engine at >= 4x
dlt's rows/s and >= 70% of the floor's, peak memory under 3 GiB. The table is printed and written to
`benchmarks/results/bench_sql-<timestamp>.md`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the engine lives at the repo root

from benchmarks.common import (  # noqa: E402 - needs the repo root on sys.path
    SAMPLE_S, Usage, add_child_arguments, add_database_url, add_wait_idle, admin_database, bench_parser,
    child_command, child_env, database, describe_server, dlt_steps, fastest, measure_note, print_and_write,
    print_result, run_measured, sync_timed, wait_idle,
)
from layers.addressing import Address  # noqa: E402

FLOOR = "floor"
PEER = "dlt sql_table"
ENGINE = "engine"
WARM = "engine, Ray up"
"""The optional run: the engine with Ray started before its clock, as a long-lived cluster would be."""
SIDES = (FLOOR, PEER, ENGINE, WARM)
VS_DLT_TARGET = 4.0
VS_FLOOR_TARGET = 0.70
MEMORY_LIMIT_MIB = 3 * 1024

SCHEMA, TABLE = "public", "orders"
SPEC_NAME = "sqlbench"
INSTANCE = Address("local", "prod", SPEC_NAME)
"""The engine's instance (the spec says `env: prod`): its bronze table is `bronze.raw_sqlbench_orders`."""
ENGINE_SCHEMA, ENGINE_TABLE = INSTANCE.schema("bronze"), INSTANCE.bronze_table(TABLE)
PEER_DATASET = "peer"
STATUSES = ("new", "paid", "shipped", "delivered", "cancelled", "refunded")
COLUMNS: tuple[tuple[str, str, str], ...] = (
    # (name, type, value for row g of generate_series): deterministic, cheap to generate.
    ("id", "bigint not null", "g"),
    ("updated_at", "timestamptz not null", "timestamptz '2024-01-01 00:00:00+00' + make_interval(secs => g * 6.31)"),
    ("amount", "numeric(12,2) not null", "((g * 7919) % 1000000) / 100.0"),
    ("customer", "text not null", "'Customer ' || ((g * 2654435761) % 1000003)"),
    ("status", "order_status not null", f"(enum_range(null::order_status))[1 + (g * 31) % {len(STATUSES)}]"),
    ("is_paid", "boolean not null", "(g * 13) % 10 < 7"),
    ("order_date", "date not null", "date '2024-01-01' + ((g * 17) % 730)::int"),
    ("note", "text", "case when g % 3 = 0 then null else 'leave at the door, ring twice #' || (g % 97) end"),
    ("attributes", "jsonb not null",
     "jsonb_build_object('channel', (array['web', 'app', 'store'])[1 + g % 3], 'items', 1 + g % 7,"
     " 'coupon', g % 5 = 0)"),
)
SPEC_TEMPLATE = """\
name: {name}
env: prod
source_type: database
sync_mode: full
source:
  url: {url}
  partition_rows: {partition_rows}
  tables:
    - {{table: {schema}.{table}, cursor: updated_at}}
tuning:
  commit_rows: {commit_rows}
"""


# -- the source table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceStats:
    """What every side must land: the source's row count, id range and sum of `amount`."""

    rows: int
    min_id: int
    max_id: int
    amount: Decimal


def create_source(url: str, rows: int, *, jsonb: bool) -> float:
    """Fill `public.orders` with `rows` rows (generate_series), add the primary key, freeze and analyse it
    (so that no side pays for setting hint bits); return the seconds it took."""
    import psycopg

    t0 = time.perf_counter()
    columns = [c for c in COLUMNS if jsonb or c[0] != "attributes"]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create type order_status as enum (" + ", ".join(f"'{s}'" for s in STATUSES) + ")")
        conn.execute(f"create table {SCHEMA}.{TABLE} (" + ", ".join(f"{n} {t}" for n, t, _ in columns) + ")")
        values = ", ".join(v for _, _, v in columns)
        conn.execute(f"insert into {SCHEMA}.{TABLE} select {values}"  # type: ignore[arg-type]
                     f" from generate_series(1::bigint, {int(rows)}) g")
        conn.execute(f"alter table {SCHEMA}.{TABLE} add primary key (id)")
        conn.execute(f"vacuum (freeze, analyze) {SCHEMA}.{TABLE}")
    return time.perf_counter() - t0


def source_stats(url: str) -> tuple[SourceStats, str]:
    """Return the source's stats and its size on disk."""
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(f"select count(*), min(id), max(id), sum(amount),"  # type: ignore[arg-type]
                           f" pg_size_pretty(pg_total_relation_size('{SCHEMA}.{TABLE}'))"
                           f" from {SCHEMA}.{TABLE}").fetchone()
    assert row is not None
    return SourceStats(row[0], row[1], row[2], row[3]), row[4]


def source_columns(url: str) -> list[str]:
    import psycopg

    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute(
            "select column_name from information_schema.columns where table_schema = %s and table_name = %s"
            " order by ordinal_position", (SCHEMA, TABLE))]


# -- the sides --------------------------------------------------------------------------------------


def run_floor(source_url: str, dest_url: str, lakehouse: Path, commit_rows: int) -> dict[str, Any]:
    """Read the table over ADBC as Arrow batches; every `commit_rows` rows, write them to Delta, then load
    them into Postgres with `adbc_ingest` and commit. One process, one thread, in that order."""
    import adbc_driver_postgresql.dbapi as adbc
    import pyarrow as pa
    from deltalake import write_deltalake

    from layers.postgres import COPY_BATCH_ROWS

    decimal = pa.decimal128(12, 2)
    steps = {"read": 0.0, "normalise": 0.0, "delta": 0.0, "postgres": 0.0}

    def normalise(batch: pa.RecordBatch) -> pa.RecordBatch:
        """Unwrap ADBC's extension types (numeric arrives as text) and drop its field metadata: the types
        the engine's bronze has, and what `write_deltalake` accepts."""
        arrays, fields = [], []
        for field, col in zip(batch.schema, batch.columns, strict=True):
            if isinstance(col, pa.ExtensionArray):
                col = col.storage
            if field.name == "amount":
                col = col.cast(decimal)
            arrays.append(col)
            fields.append(pa.field(field.name, col.type))
        return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))

    t0 = time.perf_counter()
    columns = source_columns(source_url)
    select = ", ".join(f"{c}::text as {c}" if c == "attributes" else c for c in columns)  # jsonb as its text
    rows = 0
    with adbc.connect(source_url) as src, adbc.connect(dest_url) as dst, src.cursor() as read, dst.cursor() as load:

        def commit(chunk: list[pa.RecordBatch]) -> None:
            t = time.perf_counter()
            data = pa.Table.from_batches(chunk)
            write_deltalake(str(lakehouse / TABLE), data, mode="append")
            t_delta = time.perf_counter()
            # COPY batches of the engine's size: the driver encodes a whole batch before sending any of it.
            batches = data.to_batches(max_chunksize=COPY_BATCH_ROWS)
            load.adbc_ingest(TABLE, pa.RecordBatchReader.from_batches(data.schema, batches), mode="create_append")
            dst.commit()
            steps["delta"] += t_delta - t
            steps["postgres"] += time.perf_counter() - t_delta

        read.execute(f"select {select} from {SCHEMA}.{TABLE}")
        reader = read.fetch_record_batch()
        chunk: list[pa.RecordBatch] = []
        gathered = 0
        while True:
            t = time.perf_counter()
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            t_read = time.perf_counter()
            chunk.append(normalise(batch))
            steps["read"] += t_read - t
            steps["normalise"] += time.perf_counter() - t_read
            gathered += batch.num_rows
            rows += batch.num_rows
            if gathered >= commit_rows:
                commit(chunk)
                chunk, gathered = [], 0
        if chunk:
            commit(chunk)
    return {"rows": rows, "seconds": time.perf_counter() - t0, "steps": {k: round(v, 2) for k, v in steps.items()}}


def run_peer(source_url: str, lakehouse: Path, work: Path) -> dict[str, Any]:
    """Load the table with dlt's `sql_table` (pyarrow backend) into Delta on the local filesystem."""
    import dlt
    from dlt.sources.sql_database import sql_table

    t0 = time.perf_counter()
    # psycopg2, dlt's usual Postgres driver; SQLAlchemy 2.1 would otherwise pick psycopg 3 (17% slower here).
    credentials = source_url.replace("postgresql://", "postgresql+psycopg2://", 1)
    source = sql_table(credentials=credentials, table=TABLE, schema=SCHEMA, backend="pyarrow")
    pipeline = dlt.pipeline(pipeline_name="bench_sql", pipelines_dir=str(work / "dlt"),
                            destination=dlt.destinations.filesystem(bucket_url=str(lakehouse)),
                            dataset_name=PEER_DATASET)
    pipeline.run(source, table_format="delta")
    seconds = time.perf_counter() - t0
    steps = dlt_steps(pipeline)
    trace = pipeline.last_trace
    normalized = trace.last_normalize_info if trace else None
    rows = (normalized.row_counts or {}).get(TABLE, 0) if normalized else 0
    return {"rows": rows, "seconds": seconds, "steps": steps}


def run_engine(source_url: str, dest_url: str, work: Path, *, partition_rows: int, commit_rows: int,
               warm: bool) -> dict[str, Any]:
    """Sync the table with the engine's `database` source, on a local Ray it starts itself (before the clock
    starts when `warm`)."""
    import psycopg

    from engine.controlplane.settings import Settings
    from engine.controlplane.db import Database
    from engine.controlplane.vault import set_secret
    from engine.core.spec import redact_url

    settings = Settings(home=work / "home", database_url=dest_url, lakehouse_uri=str(work / "lakehouse"),
                        ray_address=None)
    url = source_url
    if redact_url(source_url) != source_url:  # a spec names a URL with a password through a secret
        set_secret(Database(dest_url), settings.home, "sqlbench_source", source_url)
        url = "{secret: sqlbench_source}"
    text = spec_text(url, partition_rows, commit_rows)
    result, seconds = sync_timed(text, db_url=dest_url, settings=settings, warm=warm)
    with psycopg.connect(dest_url) as conn:
        row = conn.execute("select timings from connector_runs where id = %s", (result.run_id,)).fetchone()
    return {"rows": result.rows, "seconds": seconds, "partitions": result.partitions,
            "steps": dict(row[0] or {}) if row else {}}


def spec_text(source_url: str, partition_rows: int, commit_rows: int) -> str:
    return SPEC_TEMPLATE.format(name=SPEC_NAME, url=source_url, partition_rows=partition_rows, schema=SCHEMA,
                                table=TABLE, commit_rows=commit_rows)


def child_main(args: argparse.Namespace) -> None:
    work = Path(args.work)
    if args.child == FLOOR:
        out = run_floor(args.source_url, args.db_url, work / "lakehouse", args.commit_rows)
    elif args.child == PEER:
        out = run_peer(args.source_url, work / "lakehouse", work)
    else:
        out = run_engine(args.source_url, args.db_url, work, partition_rows=args.partition_rows,
                         commit_rows=args.commit_rows, warm=args.child == WARM)
    print_result(out)


# -- measuring --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Landed:
    """What one destination holds: rows, distinct ids, id range and sum of `amount`."""

    where: str
    rows: int
    distinct: int
    min_id: int | None
    max_id: int | None
    amount: Decimal | None

    def matches(self, src: SourceStats) -> bool:
        """Every source row exactly once (as many distinct ids as rows, as the source, over its id range),
        with the same values (the sum of `amount`)."""
        return (self.rows == self.distinct == src.rows and self.min_id == src.min_id and self.max_id == src.max_id
                and self.amount == src.amount)

    def describe(self) -> str:
        return (f"{self.where} {self.rows:,} rows, {self.distinct:,} distinct ids {self.min_id}..{self.max_id},"
                f" sum(amount) {self.amount}")


@dataclass
class Measured:
    side: str
    rows: int
    seconds: float
    landed: list[Landed]
    steps: dict[str, Any]
    usage: Usage
    """Its Postgres CPU is that of the backends serving the source and destination databases, and the
    server's writers."""

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def measure(side: str, args: argparse.Namespace, admin_url: str, source: str, src: SourceStats) -> Measured:
    """Run one side in a subprocess against a fresh destination database and work folder."""
    from engine.controlplane.db import with_database

    work = Path(tempfile.mkdtemp(prefix=f"ipai-bench-sql-{side.replace(', ', '-').replace(' ', '-')}-"))
    # Named after the source database, so that the sampler's Postgres CPU (backends whose command line names
    # the database) counts the backends reading the source and those loading the destination.
    dest = f"{source}_{uuid.uuid4().hex[:8]}"
    env = child_env(RUNTIME__DLTHUB_TELEMETRY="false", DLT_DATA_DIR=str(work / "dlt"))
    try:
        with database(admin_url, dest, keep=args.keep) as dest_url:
            cmd = child_command(__file__, side, "--db-url", dest_url, "--source-url", with_database(admin_url, source),
                                "--work", str(work), "--partition-rows", str(args.partition_rows),
                                "--commit-rows", str(args.commit_rows))
            result, usage = run_measured(side, cmd, env=env, database=source)
            landed = count_landed(side, work, dest_url)
    finally:
        if args.keep:
            print(f"  kept: {work} and database {dest}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    rows = result["rows"] or (landed[0].rows if side == PEER else 0)
    return Measured(side, rows, result["seconds"], landed, result.get("steps", {}), usage)


def count_landed(side: str, work: Path, dest_url: str) -> list[Landed]:
    """Read back what the side wrote (outside the timing): Delta, and Postgres for the floor and the engine."""
    delta_path = {FLOOR: work / "lakehouse" / TABLE, PEER: work / "lakehouse" / PEER_DATASET / TABLE}.get(
        side, work / "lakehouse" / ENGINE_SCHEMA / ENGINE_TABLE)
    out = [delta_landed(delta_path)]
    if side != PEER:
        out.append(postgres_landed(dest_url, "public" if side == FLOOR else ENGINE_SCHEMA,
                                   TABLE if side == FLOOR else ENGINE_TABLE))
    return out


def delta_landed(path: Path) -> Landed:
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    if not (path / "_delta_log").is_dir():
        return Landed(f"Delta (no table at {path})", 0, 0, None, None, None)
    data = DeltaTable(str(path)).to_pyarrow_dataset().to_table(columns=["id", "amount"])
    ids = data.column("id")
    amount = pc.sum(data.column("amount")).as_py()
    return Landed("Delta", data.num_rows, pc.count_distinct(ids).as_py(), pc.min(ids).as_py(), pc.max(ids).as_py(),
                  Decimal(amount) if amount is not None else None)


def postgres_landed(url: str, schema: str, table: str) -> Landed:
    import psycopg

    with psycopg.connect(url) as conn:
        query = f'select count(*), count(distinct id), min(id), max(id), sum(amount) from "{schema}"."{table}"'
        row = conn.execute(query).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return Landed("Postgres", *row)


# -- reporting --------------------------------------------------------------------------------------


def table(results: list[Measured]) -> str:
    by = {m.side: m for m in results}
    peer, floor = by.get(PEER), by.get(FLOOR)
    lines = ["| side | rows | seconds | rows/s | peak memory (MiB) | vs dlt | vs floor |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for m in results:
        vs_dlt = f"{m.rows_per_second / peer.rows_per_second:.1f}x" if peer else "-"
        vs_floor = f"{m.rows_per_second / floor.rows_per_second:.1%}" if floor else "-"
        busy = " (busy machine)" if m.usage.machine_busy else ""
        lines.append(f"| {m.side}{busy} | {m.rows:,} | {m.seconds:.1f} | {m.rows_per_second:,.0f}"
                     f" | {m.usage.peak_mib:,.0f}"
                     f" | {vs_dlt} | {vs_floor} |")
    return "\n".join(lines)


def verdicts(results: list[Measured], src: SourceStats) -> list[tuple[bool | None, str]]:
    """The three targets on each engine run (with and without Ray up), and what landed on every side."""
    by = {m.side: m for m in results}
    peer, floor = by.get(PEER), by.get(FLOOR)
    out: list[tuple[bool | None, str]] = []
    for m in results:
        if m.side not in (ENGINE, WARM):
            continue
        what = "engine (starting its own Ray)" if m.side == ENGINE else "engine with Ray up"
        if peer is None:
            out.append((None, f"{what}: vs dlt not checked (no dlt run)"))
        else:
            ratio = m.rows_per_second / peer.rows_per_second
            out.append((ratio >= VS_DLT_TARGET, f"{what} at {ratio:.1f}x dlt's rows/s ({m.rows_per_second:,.0f} vs"
                        f" {peer.rows_per_second:,.0f}; target >= {VS_DLT_TARGET:.0f}x)"))
        if floor is None:
            out.append((None, f"{what}: vs the floor not checked (no floor run)"))
        else:
            ratio = m.rows_per_second / floor.rows_per_second
            out.append((ratio >= VS_FLOOR_TARGET, f"{what} at {ratio:.1%} of the floor's rows/s"
                        f" ({m.rows_per_second:,.0f} vs {floor.rows_per_second:,.0f};"
                        f" target >= {VS_FLOOR_TARGET:.0%})"))
        out.append((m.usage.peak_mib < MEMORY_LIMIT_MIB, f"{what}: peak memory {m.usage.peak_mib:,.0f} MiB"
                    f" (target < {MEMORY_LIMIT_MIB:,} MiB)"))
    for m in results:
        ok = m.rows == src.rows and all(x.matches(src) for x in m.landed)
        out.append((ok, f"{m.side}: reported {m.rows:,} rows; " + "; ".join(x.describe() for x in m.landed)
                    + f" (source: {src.rows:,} rows, ids {src.min_id}..{src.max_id}, sum(amount) {src.amount})"))
    return out


def detail(m: Measured) -> str:
    u = m.usage
    steps = ", ".join(f"{k} {v}" for k, v in m.steps.items())
    return (f"{m.side}: {m.rows:,} rows in {m.seconds:.1f} s ({u.wall_seconds:.1f} s with process start),"
            f" {m.rows_per_second:,.0f} rows/s; own timings: {steps or '-'}; {u.peak(outside_tree=True)};"
            f" {u.at_peak()}; {u.cpu_seconds()}")


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--rows", type=int, default=5_000_000, help="rows in the source table")
    parser.add_argument("--partition-rows", type=int, default=500_000, help="the engine spec's partition_rows")
    parser.add_argument("--commit-rows", type=int, default=1_000_000, help="rows per Delta commit and Postgres load"
                        " (the engine spec's tuning.commit_rows, and the floor's)")
    parser.add_argument("--no-jsonb", action="store_true", help="make the source table without its jsonb column")
    parser.add_argument("--only", help="comma-separated sides to run: floor, dlt, engine, warm (default: floor,"
                        " dlt, engine, and warm with --warm-ray)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each side, alternating; the fastest of"
                        " each is reported, with the highest peak memory of all its runs")
    parser.add_argument("--warm-ray", action="store_true", help="also run the engine with Ray started before its"
                        " clock (a long-lived cluster); checked against the targets too")
    parser.add_argument("--keep", action="store_true", help="keep the source and destination databases and the"
                        " work folders (their names are printed)")
    parser.add_argument("--source-database", help="use this existing source database (made by an earlier --keep run)"
                        " instead of making one; it is never dropped")
    add_wait_idle(parser)
    add_database_url(parser)
    add_child_arguments(parser, SIDES)
    parser.add_argument("--source-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return

    names = {"floor": FLOOR, "dlt": PEER, "engine": ENGINE, "warm": WARM}
    if args.only:
        unknown = [s for s in args.only.split(",") if s.strip() not in names]
        if unknown:
            parser.error(f"--only: unknown side {unknown[0]!r}; give some of {', '.join(names)}")
        sides = [names[s.strip()] for s in args.only.split(",")]
    else:
        sides = [FLOOR, PEER, ENGINE] + ([WARM] if args.warm_ray else [])
    admin, server = admin_database(args.database_url)
    started = time.perf_counter()
    source = args.source_database or f"ipai_bench_sql_{uuid.uuid4().hex[:8]}"
    with database(admin, source, keep=args.keep, create=not args.source_database) as source_url:
        if not args.source_database:
            print(f"making the source table: {args.rows:,} rows in {source}.{SCHEMA}.{TABLE} ...", flush=True)
            made = create_source(source_url, args.rows, jsonb=not args.no_jsonb)
            print(f"  made in {made:.1f} s", flush=True)
        src, size = source_stats(source_url)
        columns = source_columns(source_url)
        header = (f"source: {src.rows:,} rows in {SCHEMA}.{TABLE} ({size}; columns {', '.join(columns)}),"
                  f" database {source}; {args.repeat} run(s) of each side, the fastest kept; engine spec:"
                  f" partition_rows {args.partition_rows:,}; commit_rows (engine and floor) {args.commit_rows:,};"
                  f" postgres: {describe_server(admin, server)}; cpus: {os.cpu_count()}")
        print(header, flush=True)
        best: dict[str, Measured] = {}
        measures: set[str] = set()
        details: list[str] = []
        for _ in range(args.repeat):
            for side in sides:
                wait_idle(args.wait_idle)
                m = measure(side, args, admin, source, src)
                measures.add(m.usage.measure)
                details.append(detail(m))
                print(details[-1], flush=True)
                if side in best:  # the fastest run on a quiet machine is reported, with the highest peak memory
                    failures = [x for x in best[side].landed if not x.matches(src)]
                    m = fastest(best[side], m, quiet_first=True)
                    m.landed = m.landed + failures  # keep failures
                best[side] = m
        results = [best[side] for side in sides]
        if args.keep and not args.source_database:
            print(f"kept the source database {source} (reuse it with --source-database {source})", flush=True)
    minutes = (time.perf_counter() - started) / 60
    note = (f"rows/s: source rows landed (the floor and the engine in Delta and Postgres, dlt in Delta only) over"
            f" the side's seconds (inside its process, imports done; the engine's includes starting Ray unless"
            f" 'Ray up'). Memory: {measure_note(measures)}, sampled every {SAMPLE_S} s over the side's process tree;"
            " the PostgreSQL server is left out.")
    print_and_write("bench_sql", intro=f"{header}; {minutes:.1f} minutes in all.", report=table(results), note=note,
                    checks=verdicts(results, src), details=details, minutes=minutes)
    if server is not None:
        del server


if __name__ == "__main__":
    main()
