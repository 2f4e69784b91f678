"""What the source said and what bronze holds: the verifier every sync test shares."""

from __future__ import annotations

from collections import Counter

import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from connectors.sample import DAY_US, ORIGIN_US, SampleSpec, Shop, iso, streams


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


def bronze_postgres(url: str, table: str, schema: str = "bronze") -> pa.Table:
    with adbc.connect(url) as conn, conn.cursor() as cur:
        cur.execute(f'select * from "{schema}"."{table}"')
        return cur.fetch_arrow_table()


def bronze_delta(uri: str) -> pa.Table:
    return DeltaTable(uri).to_pyarrow_table()


def keys(table: pa.Table, pk: tuple[str, ...]) -> list[tuple]:
    cols = [table.column(c).to_pylist() for c in pk]
    return list(zip(*cols))


def assert_exactly_once_per_extraction(table: pa.Table, pk: tuple[str, ...]) -> None:
    """Each source row appears once per extraction: no duplicates from replays or retries."""
    cols = [table.column("_ipai_extraction_id").to_pylist()] + [table.column(c).to_pylist() for c in pk]
    counts = Counter(zip(*cols))
    dupes = [k for k, n in counts.items() if n > 1]
    assert not dupes, f"{len(dupes)} rows loaded more than once in one extraction, e.g. {dupes[:3]}"
