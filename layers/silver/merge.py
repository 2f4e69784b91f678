"""Silver: one row per primary key, the latest version, with deletes kept as soft deletes.

A finished extraction's bronze rows are merged into `silver/<name>_<stream>` (Delta) and
`silver."<name>_<stream>"` (Postgres). The merge is a pure function of the rows, so merging the same
rows again, in any order or split, leaves silver as it was:

- a row's *version* is `(_ipai_lsn, _ipai_seq)` for change-data-capture streams, else when it was read
  (`_ipai_extracted_at`: a later read shows the source's later state) then the stream's cursor (which
  orders a key's copies within one read), nulls lowest;
- the greatest version per key wins, ties broken by a hash of the row's data (`_ipai_row_hash`, kept in
  silver), so the winner depends neither on arrival order nor on how often a row arrives; a row replaces
  the stored one only if strictly greater, so a replay changes nothing, system columns included;
- a CDC delete (`_ipai_op = 'd'`) sets `_ipai_deleted` and keeps the last known values; a truncate
  marks every older row deleted; a TOASTed column an update did not send (named in `_ipai_unchanged`)
  keeps the value silver has.

Schema changes are decided once, in Arrow terms, against silver's current schema (see `evolve.py`):
new columns are added, safe widenings applied in place, and a value that fits neither type is
quarantined in bronze (`quarantine_<name>_<stream>`) with its column and reason, never crashing the
run nor resetting the table.

Memory is bounded by the chunk, not the table: bronze is read in chunks of `chunk_rows`, each merged on
its own (correct, since merges commute), and each Delta merge is scoped to the partitions the chunk
touches when the table is partitioned (`partition_by`, a column that never changes for a key).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import datetime

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from layers.silver.evolve import Quarantined, conform
from layers.silver.flatten import flatten
from layers.silver.delta import DeltaSilverTable
from layers.silver.postgres import PostgresSilverTable
from layers.silver.quarantine import write_quarantine
from layers.silver.target import BRONZE_ONLY, Merge, SilverResult, SilverTarget

def version_columns(names: Sequence[str], cursor: str | None, key: Sequence[str] = ()) -> list[str]:
    """The columns whose values order a key's versions, most significant first (a cursor that is part of
    the key, as a report's date is, orders nothing)."""
    if "_ipai_lsn" in names:
        return ["_ipai_lsn", "_ipai_seq"] + [c for c in ("_ipai_extracted_at", "_ipai_row_hash") if c in names]
    # The read's time before the cursor: a later read shows the source's later state, while the cursor can go
    # back for a key (a transaction that began first, and stamped its start, committed last).
    tail = [cursor] if cursor and cursor in names and cursor not in key else []
    return [c for c in ("_ipai_extracted_at",) if c in names] + tail + (["_ipai_row_hash"] if "_ipai_row_hash" in names else [])


def merge_extractions(target: SilverTarget, merges: Sequence[Merge], *, run_id: str) -> SilverResult:
    """Merge the bronze rows of finished extractions (oldest first) into silver; safe to repeat.

    After a complete extraction, the keys it did not deliver are soft-deleted: they are the rows whose
    version is older than the extraction (a row it delivered carries a later `_ipai_extracted_at`, so it
    replaced the stored one)."""
    with SilverMerger(target, run_id=run_id) as merger:
        for merge in merges:
            for chunk in _bronze_chunks(target, merge.extraction_id):
                merger.merge(chunk, extraction_id=merge.extraction_id)
            if merge.complete:
                merger.delete_older_than(merge.started_at)
    return merger.result


class SilverMerger:
    """Merges chunks of bronze rows into one silver table (Delta and/or Postgres), keeping a tally."""

    def __init__(self, target: SilverTarget, *, run_id: str) -> None:
        self.target, self.run_id = target, run_id
        self.result = SilverResult()
        self.delta = DeltaSilverTable(target.delta_uri, target.key, target.partition_by) if target.delta_uri else None
        self.pg = (PostgresSilverTable(target.postgres_url, target.postgres_schema, target.table, target.key)
                   if target.postgres_url else None)
        self._t0 = time.monotonic()

    def __enter__(self) -> SilverMerger:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pg is not None:
            self.pg.close()
        self.result.seconds = round(time.monotonic() - self._t0, 3)

    def merge(self, chunk: pa.Table, *, extraction_id: str) -> None:
        """Merge one chunk of bronze rows (any order, any split, any number of times: same silver)."""
        result = self.result
        result.rows_in += chunk.num_rows
        if self.target.flatten:
            chunk, unparsed = flatten(chunk, self.target.flatten, key=self.target.key)
            _record_quarantine(self.target, unparsed, result, run_id=self.run_id, extraction_id=extraction_id)
        rows, truncated_below = prepare(chunk, self.target)
        declared = self.delta.schema() if self.delta else (self.pg.schema() if self.pg else None)
        rows, quarantined, changes = conform(rows, declared, key=self.target.key)
        _record_quarantine(self.target, quarantined, result, run_id=self.run_id, extraction_id=extraction_id)
        result.changes.extend(c for c in changes if c not in result.changes)
        versions = version_columns(rows.schema.names, self.target.cursor, self.target.key)
        if self.delta is not None:
            self.delta.merge(rows, versions, truncated_below=truncated_below, widen=changes)
        if self.pg is not None:
            self.pg.merge(rows, versions, truncated_below=truncated_below)
        result.rows_merged += rows.num_rows

    def delete_older_than(self, started_at: datetime) -> None:
        """Soft-delete the live rows last delivered before `started_at` (by extractions before a complete one)."""
        counts = [t.delete_older_than(started_at) for t in (self.delta, self.pg) if t is not None]
        self.result.missing_deleted += max(counts, default=0)


def prepare(chunk: pa.Table, target: SilverTarget) -> tuple[pa.Table, int | None]:
    """Return the chunk as silver rows (one per key, the newest) and the LSN below which a truncate
    deleted everything (None if the chunk holds no truncate)."""
    table = _decoded(chunk.drop_columns([c for c in BRONZE_ONLY if c in chunk.column_names]))
    names = table.column_names
    truncated_below: int | None = None
    deleted = pa.repeat(pa.scalar(False), table.num_rows)
    if "_ipai_op" in names:
        op = table.column("_ipai_op")
        truncates = table.filter(pc.equal(op, "t"))
        if truncates.num_rows:
            truncated_below = pc.max(truncates.column("_ipai_lsn")).as_py()
            table = table.filter(pc.invert(pc.fill_null(pc.equal(op, "t"), False)))
            op = table.column("_ipai_op")
        deleted = pc.fill_null(pc.equal(op, "d"), False)
        if truncated_below is not None:
            deleted = pc.or_(deleted, pc.less(table.column("_ipai_lsn"), truncated_below))
    table = table.append_column("_ipai_deleted", deleted)
    table = _latest_per_key(table, target)
    # `_ipai_unchanged` goes on to the merge (what silver must keep); it is not stored.
    return table.drop_columns([c for c in ("_ipai_op",) if c in table.column_names]), truncated_below


def _latest_per_key(table: pa.Table, target: SilverTarget) -> pa.Table:
    """Keep the greatest version of each key (ties broken by the row's hash, so arrival order never matters)."""
    if table.num_rows == 0:
        return table
    versions = version_columns(table.column_names, target.cursor, target.key)
    if "_ipai_unchanged" in table.column_names and table.column("_ipai_unchanged").null_count < table.num_rows:
        table = _fill_unchanged(table, target, versions)
    data = [c for c in table.column_names if not c.startswith("_ipai_") and c not in target.key and c not in versions]
    frame = pl.from_arrow(table.select([*target.key, *versions, *data]), rechunk=False)
    assert isinstance(frame, pl.DataFrame)
    frame = frame.with_columns(pl.int_range(pl.len()).alias("__row"),
                               _row_hash(frame, data).reinterpret(signed=True).alias("_ipai_row_hash"))
    order = [*target.key, *versions, "_ipai_row_hash"]
    frame = frame.sort(order, descending=[False] * len(target.key) + [True] * (len(order) - len(target.key)),
                       nulls_last=True)
    kept = frame.unique(subset=list(target.key), keep="first", maintain_order=True)
    return table.take(kept.get_column("__row").to_arrow()).append_column(
        "_ipai_row_hash", kept.get_column("_ipai_row_hash").to_arrow())


def _row_hash(frame: pl.DataFrame, data: list[str]) -> pl.Expr:
    """A hash of the row's data columns: breaks exact version ties the same way whatever the order."""
    if not data:
        return pl.lit(0, pl.UInt64)
    return pl.struct([pl.col(c) for c in data]).hash(seed=0)


def _fill_unchanged(table: pa.Table, target: SilverTarget, versions: list[str]) -> pa.Table:
    """A column an update did not send (TOAST, named in `_ipai_unchanged`) takes the value the key's last
    earlier version in the chunk sent; what no version in the chunk sent stays named, and the merge keeps
    silver's value for it."""
    keys = list(target.key)
    named = sorted({n for v in table.column("_ipai_unchanged").drop_null().to_pylist() for n in v.split(",")
                    if n in table.column_names})
    frame = pl.from_arrow(table.select([*keys, *versions, "_ipai_unchanged"]), rechunk=False)
    assert isinstance(frame, pl.DataFrame)
    listed = pl.col("_ipai_unchanged").fill_null("").str.split(",")
    frame = frame.with_columns(pl.int_range(pl.len()).alias("__row")).sort([*keys, *versions], nulls_last=False)
    frame = frame.with_columns(
        pl.when(~listed.list.contains(pl.lit(n))).then(pl.col("__row")).forward_fill().over(keys).alias(f"__from_{n}")
        for n in named
    ).sort("__row")
    for n in named:
        i = table.schema.get_field_index(n)
        table = table.set_column(i, table.schema.field(i), table.column(i).take(frame.get_column(f"__from_{n}").to_arrow()))
    unsent = pl.concat_str([pl.when(pl.col(f"__from_{n}").is_null()).then(pl.lit(n)) for n in named],
                           separator=",", ignore_nulls=True)
    still = frame.select(pl.when(unsent == "").then(None).otherwise(unsent)).to_series().to_arrow().cast(pa.string())
    i = table.schema.get_field_index("_ipai_unchanged")
    return table.set_column(i, table.schema.field(i), still)


def _bronze_chunks(target: SilverTarget, extraction_id: str) -> Iterator[pa.Table]:
    """The extraction's bronze rows, `chunk_rows` at a time: from Delta when the lakehouse is on (file
    statistics skip other extractions' files), else from the Postgres bronze table."""
    if target.bronze_delta_uri:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            dataset = DeltaTable(target.bronze_delta_uri).to_pyarrow_dataset()
        except TableNotFoundError:
            return
        batches = dataset.to_batches(filter=pc.field("_ipai_extraction_id") == extraction_id)
        yield from _chunked(batches, target.chunk_rows)
        return
    if target.postgres_url:
        import adbc_driver_postgresql.dbapi as adbc

        from engine.core.sql import quote_ident

        table = f"{quote_ident(target.bronze_postgres_schema)}.{quote_ident(target.bronze_table)}"
        with adbc.connect(target.postgres_url) as conn, conn.cursor() as cur:
            cur.execute("select column_name, data_type from information_schema.columns where table_schema = $1"
                        " and table_name = $2 order by ordinal_position",
                        (target.bronze_postgres_schema, target.bronze_table))
            # Delta has no uuid type: the id system columns are text in silver wherever it is read from.
            columns = [quote_ident(c) + ("::text" if t == "uuid" else "") for c, t in cur.fetchall()]
            if not columns:
                return
            cur.execute(f"select {', '.join(columns)} from {table} where _ipai_extraction_id = $1::uuid",
                        (extraction_id,))
            yield from _chunked(iter(cur.fetch_record_batch()), target.chunk_rows)


def _chunked(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    held: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        held.append(batch)
        count += batch.num_rows
        if count >= rows:
            yield pa.Table.from_batches(held)
            held, count = [], 0
    if held:
        yield pa.Table.from_batches(held)


def _decoded(table: pa.Table) -> pa.Table:
    for i, f in enumerate(table.schema):
        if pa.types.is_dictionary(f.type):
            table = table.set_column(i, f.with_type(f.type.value_type), table.column(i).cast(f.type.value_type))
    return table


def _record_quarantine(target: SilverTarget, quarantined: Quarantined | None, result: SilverResult, *,
                       run_id: str, extraction_id: str) -> None:
    if quarantined is None or quarantined.rows.num_rows == 0:
        return
    write_quarantine(target, quarantined, run_id=run_id, extraction_id=extraction_id)
    result.quarantined += quarantined.rows.num_rows
    for reason in quarantined.rows.column("_ipai_reason").to_pylist():
        result.reasons[reason] = result.reasons.get(reason, 0) + 1
