"""Bronze tables in Postgres: ADBC bulk loads (COPY) that record each partition in a load ledger
in the same transaction, so a replayed partition is recognised and skipped.

A load fits the rows to the table: new columns are added, a narrower numeric column is widened in
place, nested values are stored as JSON text. Which rows bronze takes at all is decided before, once
for Delta and Postgres (`layers/bronze/drift.py`); the rows it sets aside are loaded into the quarantine
table in the same transaction as the partition."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa

from engine.core.sql import quote_ident
from layers.postgres import (
    ARROW_OF, LEDGER, column_types, create_layer_schema, ingest, ledger_ddl, load_as_layer_owner,
)


class PostgresBronzeTable:
    """Loads partitions into `<schema>.<table>` (and rows bronze could not take into
    `<schema>.<quarantine_table>`); owns one ADBC connection, opened on first use."""

    def __init__(self, url: str, schema: str, table: str, *, quarantine_table: str | None = None) -> None:
        self.url = url
        self.schema = schema
        self.table = table
        self.quarantine_table = quarantine_table
        self._conn: Any = None

    def _connection(self) -> Any:
        if self._conn is not None:
            return self._conn
        conn = adbc.connect(self.url)
        try:
            with conn.cursor() as cur:
                # Concurrent `create ... if not exists` can still collide in the catalog (unique
                # violation): writers of different tables set up the schema one at a time.
                cur.execute("select pg_advisory_xact_lock(hashtext('ipai bronze setup'))")
                create_layer_schema(cur, self.schema)
                load_as_layer_owner(cur, self.schema)
                cur.execute(ledger_ddl(quote_ident(self.schema)))
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

    def stored_schema(self) -> pa.Schema | None:
        """Return the table's columns as Arrow types (those Postgres says exactly: not numeric, uuid or the
        JSON text of nested columns' shape), or None if the table does not exist yet."""
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                columns = column_types(cur, self.schema, self.table)
            conn.commit()
        except BaseException:
            self.close()
            raise
        if not columns:
            return None
        return pa.schema([pa.field(name, ARROW_OF[kind]) for name, kind in columns.items() if kind in ARROW_OF])

    def load(self, commit_ids: Sequence[str], tables: Sequence[pa.Table], *,
             quarantine: Sequence[pa.Table | None] | None = None) -> set[str]:
        """Load the tables whose commit id is not yet in the ledger, in one transaction; return those loaded.

        `quarantine[i]` (rows of partition i that bronze could not take) go to the quarantine table in
        the same transaction, so a replayed partition adds neither. The ledger counts both.
        """
        held = list(quarantine) if quarantine is not None else [None] * len(tables)
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                fresh: list[int] = []
                for i, (cid, t, q) in enumerate(zip(commit_ids, tables, held, strict=True)):
                    cur.execute(
                        f"insert into {quote_ident(self.schema)}.{LEDGER} (table_name, commit_id, rows)"
                        " values ($1, $2, $3) on conflict do nothing returning commit_id",
                        (self.table, cid, t.num_rows + (q.num_rows if q is not None else 0)),
                    )
                    if cur.fetchone() is not None:
                        fresh.append(i)
                for i in fresh:
                    if tables[i].num_rows:
                        ingest(cur, self.schema, self.table, tables[i], uuid_ids=True)
                    q = held[i]
                    if q is not None and q.num_rows:
                        if self.quarantine_table is None:
                            raise ValueError(f"{self.schema}.{self.table}: rows to quarantine, but no quarantine table")
                        ingest(cur, self.schema, self.quarantine_table, q)
            conn.commit()
        except BaseException:
            self.close()  # a half-done transaction dies with its connection: nothing of it is visible
            raise
        return {commit_ids[i] for i in fresh}
