"""What the source said and what bronze holds: the verifier every sync test shares."""

from __future__ import annotations

from collections import Counter

import adbc_driver_postgresql.dbapi as adbc
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from connectors.sample import DAY_US, ORIGIN_US, SampleSpec, Shop, iso, streams
from engine.core.spec import ConnectorSpec
from layers.addressing import DEFAULT_TENANT, Address


def shop(spec: SampleSpec) -> Shop:
    return next(s for s in streams(spec)).shop


def source_rows(spec: SampleSpec, stream: str, *, after_day: int | None = None) -> pa.Table:
    """Every row of `stream` as of the spec's `today`, or only those changed after `after_day`."""
    s = next(x for x in streams(spec) if x.name == stream)
    sh = s.shop
    total = sh.customers if stream == "customers" else sh.orders
    gen = {"customers": sh.customers_batch, "orders": sh.orders_batch, "order_lines": sh.lines_batch}[stream]
    table = pa.Table.from_batches([gen(0, sh.existing(total))])
    if after_day is not None:
        lo = ORIGIN_US + after_day * DAY_US
        col = table.column(s.cursor_field)
        table = table.filter(pc.greater(col, pa.scalar(lo, col.type)))
    return table


def day_cursor(day: int) -> str:
    return iso(ORIGIN_US + day * DAY_US)


def address(spec: ConnectorSpec) -> Address:
    """Where `spec`'s tables live: the tests run a single-tenant deployment (tenant `local`)."""
    return Address(DEFAULT_TENANT, spec.env, spec.name)


def bronze_schema(spec: ConnectorSpec) -> str:
    """The Postgres schema of `spec`'s bronze tables (and its load ledger)."""
    return spec.destinations.postgres.bronze_schema or address(spec).schema("bronze")


def bronze_table(spec: ConnectorSpec, stream: str) -> str:
    """`<schema>.<table>` of `stream`'s bronze table in Postgres, as `bronze_postgres` takes it."""
    return f"{bronze_schema(spec)}.{address(spec).bronze_table(stream)}"


def bronze_uri(spec: ConnectorSpec, stream: str, lakehouse_uri: str) -> str:
    """The Delta folder of `stream`'s bronze table; `lakehouse_uri` is the settings' (the spec's own wins)."""
    a = address(spec)
    return a.delta_uri(spec.destinations.lakehouse.uri or lakehouse_uri, "bronze", a.bronze_table(stream))


def silver_table(spec: ConnectorSpec, stream: str) -> str:
    """`<schema>.<table>` of `stream`'s silver table in Postgres."""
    schema = spec.destinations.postgres.silver_schema or address(spec).schema("silver")
    return f"{schema}.{address(spec).silver_table(stream)}"


def silver_uri(spec: ConnectorSpec, stream: str, lakehouse_uri: str) -> str:
    """The Delta folder of `stream`'s silver table; `lakehouse_uri` is the settings' (the spec's own wins)."""
    a = address(spec)
    return a.delta_uri(spec.destinations.lakehouse.uri or lakehouse_uri, "silver", a.silver_table(stream))


def bronze_postgres(url: str, table: str) -> pa.Table:
    """Read a bronze table (`<schema>.<table>`) from Postgres, with its uuid system columns as text (as Delta
    has them)."""
    schema, _, name = table.partition(".")
    assert name, f"name the bronze table with its schema (`bronze_dev.{table}`), not {table!r}"
    with adbc.connect(url) as conn, conn.cursor() as cur:
        cur.execute(f'select * from "{schema}"."{name}"')
        got = cur.fetch_arrow_table()
    for i, field in enumerate(got.schema):
        if isinstance(field.type, pa.UuidType):
            text = pa.array([None if v is None else str(v) for v in got.column(i).to_pylist()], pa.string())
            got = got.set_column(i, pa.field(field.name, pa.string()), text)
    return got


def bronze_delta(uri: str) -> pa.Table:
    return DeltaTable(uri).to_pyarrow_table()


def rows_per_partition(table: pa.Table) -> Counter[tuple[str, int]]:
    """Count bronze rows by (extraction id, partition number); Postgres gives uuids, Delta text."""
    extraction = [str(v) for v in table.column("_ipai_extraction_id").to_pylist()]
    return Counter(zip(extraction, table.column("_ipai_partition").to_pylist()))


def keys(table: pa.Table, pk: tuple[str, ...]) -> list[tuple]:
    cols = [table.column(c).to_pylist() for c in pk]
    return list(zip(*cols))


def assert_exactly_once_per_extraction(table: pa.Table, pk: tuple[str, ...]) -> None:
    """Each source row appears once per extraction: no duplicates from replays or retries."""
    cols = [[str(v) for v in table.column("_ipai_extraction_id").to_pylist()]] + [table.column(c).to_pylist() for c in pk]
    counts = Counter(zip(*cols))
    dupes = [k for k, n in counts.items() if n > 1]
    assert not dupes, f"{len(dupes)} rows loaded more than once in one extraction, e.g. {dupes[:3]}"


PRIMARY_KEYS = {"customers": ("id",), "orders": ("id",), "order_lines": ("order_id", "line_no")}


def bronze_copies(spec: SampleSpec, stream: str, *, db_url: str, lakehouse_uri: str) -> dict[str, pa.Table]:
    """Return the Postgres and Delta copies of `stream`'s bronze table, by destination name."""
    return {"postgres": bronze_postgres(db_url, bronze_table(spec, stream)),
            "delta": bronze_delta(bronze_uri(spec, stream, lakehouse_uri))}


def assert_bronze_equals_source(spec: SampleSpec, stream: str, *, db_url: str, lakehouse_uri: str) -> None:
    """Both bronze copies of `stream` hold every source row exactly once, in one extraction.

    Meant for an instance whose whole history is one complete extraction of the stream (a first sync,
    however many runs, crashes and retries it took). Delta keeps the source's types, so there every
    value is compared; Postgres is compared by key.
    """
    truth = source_rows(spec, stream)
    pk = PRIMARY_KEYS[stream]
    order = [(c, "ascending") for c in pk]
    for where, got in bronze_copies(spec, stream, db_url=db_url, lakehouse_uri=lakehouse_uri).items():
        assert_exactly_once_per_extraction(got, pk)
        extractions = set(got.column("_ipai_extraction_id").to_pylist())
        assert len(extractions) == 1, f"{where} {stream}: rows from {len(extractions)} extractions, expected 1"
        assert got.num_rows == truth.num_rows, f"{where} {stream}: {got.num_rows} rows, source {truth.num_rows}"
        assert sorted(keys(got, pk)) == sorted(keys(truth, pk)), f"{where} {stream}: keys differ from the source"
        if where == "delta":
            assert got.select(truth.column_names).sort_by(order).equals(truth.sort_by(order)), (
                f"delta {stream}: values differ from the source")


def assert_state_not_ahead_of_data(db_url: str, lakehouse_uri: str, spec: ConnectorSpec) -> int:
    """Check that every partition in `connector_state` is committed in Delta and in the Postgres load ledger,
    with the rows the state says; return how many partitions were checked.

    Data may be ahead of state (committed, not yet recorded: a replay skips it), never the reverse.
    Bronze Postgres is taken to be the control-plane database (the default destination). A partition that
    read 0 rows is recorded straight from its read task and never reaches a writer, so it has no Delta
    marker and no ledger row.
    """
    schema = bronze_schema(spec)
    with psycopg.connect(db_url) as conn:
        instance = conn.execute("select id from connector_instances where name = %s and env = %s",
                                (spec.name, spec.env)).fetchone()
        assert instance is not None, f"no instance {spec.name!r} in the control plane"
        recorded = conn.execute(
            "select stream, key, rows, extraction_id::text, (state_json->>'no')::int from connector_state"
            " where instance_id = %s and kind = 'partition'",
            (instance[0],),
        ).fetchall()
        ledger: dict[tuple[str, str], int] = {}
        if conn.execute("select to_regclass(%s)", (f'"{schema}"._ipai_loads',)).fetchone() != (None,):
            ledger = {(t, c): n for t, c, n in conn.execute(
                f'select table_name, commit_id, rows from "{schema}"._ipai_loads')}
    by_stream: dict[str, list[tuple[str, int, tuple[str, int]]]] = {}
    for stream, key, n, extraction_id, number in recorded:
        if n:
            by_stream.setdefault(stream, []).append((key, int(n), (extraction_id, number)))
    dest = spec.destinations
    for stream, partitions in by_stream.items():
        table = address(spec).bronze_table(stream)
        if dest.lakehouse.enabled:
            delta_uri = bronze_uri(spec, stream, lakehouse_uri)
            log = DeltaTable(delta_uri)
            delta_rows = rows_per_partition(bronze_delta(delta_uri))
            for key, n, where in partitions:
                assert log.transaction_version(key) is not None, f"{stream} {key}: recorded, not in the Delta log"
                assert delta_rows[where] == n, f"{stream} {key}: recorded with {n} rows, Delta holds {delta_rows[where]}"
        if dest.postgres.enabled:
            pg_rows = rows_per_partition(bronze_postgres(db_url, bronze_table(spec, stream)))
            for key, n, where in partitions:
                loaded = ledger.get((table, key))
                assert loaded == n, f"{stream} {key}: recorded with {n} rows, the Postgres ledger has {loaded}"
                assert pg_rows[where] == n, f"{stream} {key}: recorded with {n} rows, Postgres holds {pg_rows[where]}"
    return len(recorded)
