"""Rows silver could not take, kept beside bronze with the reason: `quarantine_<name>_<stream>`.

Nothing is lost: the whole row is kept as JSON (`_ipai_row`) with the column, the value and why it was
set aside; fixing the cause (a declared type, the source) and re-merging brings the rows back.
"""

from __future__ import annotations

import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa
from deltalake import write_deltalake

from layers.postgres import ingest, load_as_layer_owner
from layers.silver.evolve import Quarantined
from layers.silver.postgres import ensure_schema
from layers.silver.target import SilverTarget


def quarantine_table(target: SilverTarget) -> str:
    return target.quarantine_table or f"quarantine_{target.table}"


def write_quarantine(target: SilverTarget, quarantined: Quarantined, *, run_id: str, extraction_id: str) -> None:
    rows = quarantined.rows.drop_columns([c for c in ("_ipai_run_id",) if c in quarantined.rows.column_names])
    n = rows.num_rows
    rows = rows.append_column("_ipai_run_id", pa.array([run_id] * n, pa.string()))
    rows = rows.append_column("_ipai_extraction_id", pa.array([extraction_id] * n, pa.string()))
    if target.quarantine_delta_uri:
        write_deltalake(target.quarantine_delta_uri, rows, mode="append", schema_mode="merge")
    if target.postgres_url:
        with adbc.connect(target.postgres_url) as conn, conn.cursor() as cur:
            ensure_schema(cur, target.bronze_postgres_schema)
            load_as_layer_owner(cur, target.bronze_postgres_schema)  # as bronze's own writer does
            # Bronze may have made the table first (its rows have no key columns): `ingest` adds what is missing.
            ingest(cur, target.bronze_postgres_schema, quarantine_table(target), rows)
            conn.commit()
