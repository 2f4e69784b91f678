"""Bronze tables in Postgres: ADBC bulk loads (COPY) that record each partition in a load ledger
in the same transaction, so a replayed partition is recognised and skipped."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa

LEDGER = "_ipai_loads"
UUID_COLUMNS = ("_ipai_run_id", "_ipai_extraction_id")
"""System columns that hold uuids: text in Delta (which has no uuid type), uuid in Postgres."""
COPY_BATCH_ROWS = 65_536
"""Rows per COPY batch. The ADBC driver encodes a whole Arrow batch before sending it, so the server
idles while a large batch is encoded; batches this size let it parse one while the next is encoded
(about 20% faster here than 100k-row batches) and keep the encoded buffer small."""


def quote_ident(name: str) -> str:
    """Quote an SQL identifier (the one place identifiers are quoted)."""
    return '"' + name.replace('"', '""') + '"'


class PostgresBronzeTable:
    """Loads partitions into `<schema>.<table>`; owns one ADBC connection, opened on first use."""

    def __init__(self, url: str, schema: str, table: str) -> None:
        self.url = url
        self.schema = schema
        self.table = table
        self._conn: Any = None
        self._columns: set[str] | None = None

    def _connection(self) -> Any:
        if self._conn is not None:
            return self._conn
        conn = adbc.connect(self.url)
        try:
            with conn.cursor() as cur:
                # Concurrent `create ... if not exists` can still collide in the catalog (unique
                # violation): writers of different tables set up the schema one at a time.
                cur.execute("select pg_advisory_xact_lock(hashtext('ipai bronze setup'))")
                cur.execute("select to_regnamespace($1) is null", (quote_ident(self.schema),))
                if cur.fetchone()[0]:
                    cur.execute(f"create schema {quote_ident(self.schema)}")
                # Where the control plane's migrations made the bronze owner role, load as it: tables then
                # belong to one role whoever runs the sync (a worker, the CLI), and any of them can alter them.
                cur.execute(
                    "select coalesce((select pg_has_role(oid, 'MEMBER') and has_schema_privilege(oid, $1, 'CREATE')"
                    " from pg_roles where rolname = 'ipai_bronze'), false)", (self.schema,))
                if cur.fetchone()[0]:
                    cur.execute("set role ipai_bronze")
                cur.execute(
                    f"create table if not exists {quote_ident(self.schema)}.{LEDGER} ("
                    " table_name text not null, commit_id text not null, rows bigint not null,"
                    " loaded_at timestamptz not null default now(), primary key (table_name, commit_id))"
                )
            conn.commit()
        except BaseException:
            conn.close()  # never keep a connection stuck in a failed transaction: the next call starts afresh
            raise
        self._conn = conn
        return conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
                self._columns = None

    def load(self, commit_ids: Sequence[str], tables: Sequence[pa.Table]) -> set[str]:
        """Load the tables whose commit id is not yet in the ledger, in one transaction; return those loaded."""
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                fresh: list[int] = []
                for i, (cid, t) in enumerate(zip(commit_ids, tables, strict=True)):
                    cur.execute(
                        f"insert into {quote_ident(self.schema)}.{LEDGER} (table_name, commit_id, rows)"
                        " values ($1, $2, $3) on conflict do nothing returning commit_id",
                        (self.table, cid, t.num_rows),
                    )
                    if cur.fetchone() is not None:
                        fresh.append(i)
                for i in fresh:
                    if tables[i].num_rows:
                        data = _postgres_ready(tables[i])
                        self._ensure_columns(cur, data.schema)
                        cur.adbc_ingest(self.table, data, mode="create_append", db_schema_name=self.schema)
            conn.commit()
        except BaseException:
            self.close()  # a half-done transaction dies with its connection: nothing of it is visible
            raise
        return {commit_ids[i] for i in fresh}

    def _ensure_columns(self, cur: Any, schema: pa.Schema) -> None:
        """Add columns the table lacks (additive schema change); the first load creates the table."""
        if self._columns is None:
            cur.execute(
                "select column_name from information_schema.columns where table_schema = $1 and table_name = $2",
                (self.schema, self.table),
            )
            self._columns = {r[0] for r in cur.fetchall()}
        if not self._columns:
            # The first load creates the table; two runs creating it at once would collide.
            cur.execute("select pg_advisory_xact_lock(hashtext($1))", (f"{self.schema}.{self.table}",))
            self._columns = set(schema.names)
            return
        for field in schema:
            if field.name not in self._columns:
                cur.execute(
                    f"alter table {quote_ident(self.schema)}.{quote_ident(self.table)}"
                    f" add column if not exists {quote_ident(field.name)} {_pg_type(field.type)}"
                )
                self._columns.add(field.name)


def _postgres_ready(table: pa.Table) -> pa.RecordBatchReader:
    """Return `table` as COPY-sized batches: nested columns as JSON text (bronze keeps them whole, minimally
    typed), the id system columns as uuid, other dictionary columns decoded one batch at a time."""
    for i, field in enumerate(table.schema):
        if pa.types.is_nested(field.type):
            text = pa.array([None if v is None else json.dumps(v, default=str) for v in table.column(i).to_pylist()],
                            pa.string())
            table = table.set_column(i, pa.field(field.name, pa.string()), text)
    schema = pa.schema([
        f.with_type(pa.uuid()) if f.name in UUID_COLUMNS
        else f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f
        for f in table.schema
    ])

    def convert(batch: pa.RecordBatch) -> pa.RecordBatch:
        columns = [_as_uuid(c) if f.name in UUID_COLUMNS else c.cast(f.type)
                   for c, f in zip(batch.columns, schema, strict=True)]
        return pa.RecordBatch.from_arrays(columns, schema=schema)

    batches = (convert(b) for b in table.to_batches(max_chunksize=COPY_BATCH_ROWS))
    return pa.RecordBatchReader.from_batches(schema, batches)


def _as_uuid(column: pa.Array) -> pa.Array:
    """Return text uuids as Arrow uuids (16 bytes a row in Postgres instead of 37)."""
    values, indices = (column.dictionary, column.indices) if pa.types.is_dictionary(column.type) else (column, None)
    raw = pa.array([None if v is None else uuid.UUID(v).bytes for v in values.to_pylist()], pa.binary(16))
    return pa.ExtensionArray.from_storage(pa.uuid(), raw if indices is None else raw.take(indices))


def _pg_type(t: pa.DataType) -> str:
    if isinstance(t, pa.UuidType):
        return "uuid"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        return "bigint"
    if pa.types.is_floating(t):
        return "double precision"
    if pa.types.is_decimal(t):
        return "numeric"
    if pa.types.is_timestamp(t):
        return "timestamptz" if t.tz else "timestamp"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "bytea"
    return "text"
