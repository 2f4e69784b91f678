"""A silver table in the Delta lakehouse: created sorted by key, then kept by scoped MERGEs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import TableNotFoundError

from layers.silver.sql import assignments, newer_sql

PARTITION_IN_LIMIT = 1000
"""Above this many partition values in one chunk, the merge is scoped by key statistics alone."""
MAX_SPILL_BYTES = 2 << 30
"""Bytes a MERGE may hold in memory before it spills the join to disk (delta-rs `max_spill_size`)."""


def quote(name: str) -> str:
    """Quote an identifier for delta-rs' SQL (DataFusion)."""
    return '"' + name.replace('"', '""') + '"'


class DeltaSilverTable:
    """`merge` keeps one row per key: inserts new keys, replaces a key's row only with a newer version."""

    def __init__(self, uri: str, key: Sequence[str], partition_by: Sequence[str] = ()) -> None:
        self.uri = uri
        self.key = tuple(key)
        self.partition_by = tuple(partition_by)

    def _table(self) -> DeltaTable | None:
        try:
            return DeltaTable(self.uri)
        except TableNotFoundError:
            return None

    def layout_problem(self, table: DeltaTable | None = None) -> str | None:
        """Why the table's partition columns are not the ones asked for (None when they are, or it is new)."""
        table = table or self._table()
        laid_out = [] if table is None else list(table.metadata().partition_columns)
        if table is None or laid_out == list(self.partition_by):
            return None
        return (f"silver table {self.uri} is partitioned by {laid_out or 'nothing'}, but the stream's "
                f"silver.partition_by says {list(self.partition_by) or 'nothing'}")

    def schema(self) -> pa.Schema | None:
        table = self._table()
        return None if table is None else pa.schema(table.schema().to_arrow())

    def merge(self, rows: pa.Table, versions: Sequence[str], *, truncated_below: int | None = None,
              widen: Sequence[str] = ()) -> None:
        stored = [c for c in rows.column_names if c != "_ipai_unchanged"]
        table = self._table()
        if table is None:
            if rows.num_rows:
                order = [(c, "ascending") for c in (*self.partition_by, *self.key)]
                write_deltalake(self.uri, rows.select(stored).sort_by(order), mode="append",
                                partition_by=list(self.partition_by) or None)
            return
        problem = self.layout_problem()
        if problem:
            raise ValueError(f"{problem}: run `ipai silver rebuild INSTANCE --stream STREAM` to lay it out again")
        if truncated_below is not None:
            table.update(updates={"_ipai_deleted": "true"}, predicate=f"_ipai_lsn < {int(truncated_below)}")
        self._evolve(table, rows, widen)
        if rows.num_rows == 0:
            return
        table = DeltaTable(self.uri)
        on = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in self.key) + self._scope(rows)
        merger = table.merge(rows, on, source_alias="s", target_alias="t", max_spill_size=MAX_SPILL_BYTES)
        updates = assignments(stored, self.key, rows.column_names, quote=quote)
        merger.when_matched_update(updates, predicate=newer_sql(versions, "s", "t", quote)) \
            .when_not_matched_insert({quote(c): f"s.{quote(c)}" for c in stored}).execute()

    def delete_older_than(self, started_at: datetime) -> int:
        table = self._table()
        if table is None:
            return 0
        stamp = started_at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        metrics = table.update(updates={"_ipai_deleted": "true"},
                               predicate=f"_ipai_extracted_at < '{stamp}' AND NOT _ipai_deleted")
        return int(metrics.get("num_updated_rows", 0))

    def _scope(self, rows: pa.Table) -> str:
        """Predicates naming only the part of the table this chunk can touch: the partitions it has rows in,
        and the range of its first key column. delta-rs prunes the target's files with them before the join
        (without them a MERGE reads the whole table: at 4M rows, the range alone halved time and memory)."""
        out = ""
        first = rows.column(self.key[0])
        if pa.types.is_integer(first.type) or pa.types.is_string(first.type) or pa.types.is_large_string(first.type):
            bounds = pc.min_max(first)
            lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
            if lo is not None:
                out += f" AND t.{quote(self.key[0])} >= {_literal(lo)} AND t.{quote(self.key[0])} <= {_literal(hi)}"
        for column in self.partition_by:
            values = pc.unique(rows.column(column)).drop_null().to_pylist()
            if 0 < len(values) <= PARTITION_IN_LIMIT:
                out += f" AND t.{quote(column)} IN ({', '.join(_literal(v) for v in values)})"
        return out

    def _evolve(self, table: DeltaTable, rows: pa.Table, widen: Sequence[str]) -> None:
        current = pa.schema(table.schema().to_arrow())
        added = [rows.schema.field(c) for c in rows.column_names
                 if c not in current.names and c != "_ipai_unchanged"]
        if added:
            table.alter.add_columns(list(DeltaSchema.from_arrow(pa.schema(added)).fields))
        widened = {c.split()[1] for c in widen if c.startswith("widen ")}
        if widened:
            # Delta cannot change a column's type in place without the type-widening feature, which
            # delta-rs does not write: the table is rewritten once with the wider type (no data lost).
            target = pa.schema([rows.schema.field(f.name) if f.name in widened else f
                                for f in pa.schema(DeltaTable(self.uri).schema().to_arrow())])
            source = DeltaTable(self.uri).to_pyarrow_dataset()
            batches = (b.cast(target) for b in source.to_batches())
            write_deltalake(self.uri, pa.RecordBatchReader.from_batches(target, batches), mode="overwrite",
                            schema_mode="overwrite", partition_by=list(self.partition_by) or None)


def _literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"
