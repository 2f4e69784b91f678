"""Bronze tables in the Delta lakehouse, committed idempotently with app-transaction markers."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import TableNotFoundError


class DeltaBronzeTable:
    """Appends partitions to one Delta table; a partition whose marker is in the log is never written twice."""

    def __init__(self, uri: str, *, storage_options: dict[str, str] | None = None) -> None:
        self.uri = uri
        self.storage_options = storage_options
        self._table: DeltaTable | None = None

    def _load(self) -> DeltaTable | None:
        """The table at its latest version (the log is read incrementally after the first load), or None."""
        if self._table is not None:
            self._table.update_incremental()
            return self._table
        try:
            self._table = DeltaTable(self.uri, storage_options=self.storage_options)
        except TableNotFoundError:
            return None
        return self._table

    def stored_schema(self) -> pa.Schema | None:
        """Return the table's schema in Arrow terms, or None if the table does not exist yet."""
        table = self._load()
        return None if table is None else pa.schema(table.schema().to_arrow())

    def committed(self, commit_ids: Sequence[str]) -> set[str]:
        """Return the ids among `commit_ids` whose data is already in the table."""
        table = self._load()
        if table is None:
            return set()
        return {cid for cid in commit_ids if table.transaction_version(cid) is not None}

    def append(self, commit_ids: Sequence[str], tables: Sequence[pa.Table]) -> None:
        """Append `tables` in one Delta commit carrying one app-transaction marker per commit id.

        New columns and new struct fields are added to the table (schema merge); a column the table has
        and a table lacks is null in its rows. Types are not reconciled here: the bronze writer has cast
        every column to the table's type first (see `layers/bronze/drift.py`).
        """
        if not tables:
            return
        schema = _unify([_decoded(t.schema) for t in tables])
        batches = (_fitted(b, schema) for t in tables for b in t.to_batches())
        write_deltalake(
            self.uri,
            pa.RecordBatchReader.from_batches(schema, batches),
            mode="append",
            schema_mode="merge",
            storage_options=self.storage_options,
            commit_properties=CommitProperties(
                app_transactions=[Transaction(app_id=cid, version=1) for cid in commit_ids]
            ),
        )


def _decoded(schema: pa.Schema) -> pa.Schema:
    """Return `schema` with dictionary columns (the system columns) as their value type: decoded batch by
    batch on the way in, so the Parquet files carry plain types, as Delta's schema says."""
    return pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in schema])


def _unify(schemas: list[pa.Schema]) -> pa.Schema:
    if all(s.equals(schemas[0]) for s in schemas[1:]):
        return schemas[0]
    return pa.unify_schemas(schemas, promote_options="permissive")


def _fitted(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Return `batch` in `schema`'s column order and types; a column it lacks (dropped at the source, or
    new in another partition of the commit) is null."""
    if batch.schema.equals(schema):
        return batch
    names = set(batch.schema.names)
    columns = [batch.column(f.name).cast(f.type) if f.name in names else pa.nulls(batch.num_rows, f.type)
               for f in schema]
    return pa.RecordBatch.from_arrays(columns, schema=schema)
