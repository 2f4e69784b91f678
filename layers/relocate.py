"""Moving a table to a new address, rows, load ledger and exactly-once markers together.

Used to upgrade tables made before every tenant and env had its own schemas (`bronze.raw_<name>_<stream>`
for every env; layers/addressing.py has today's rule): engine/run/upgrade.py decides what moves, this module
moves it. A Postgres table changes schema (and name) in place, with its rows in the load ledger moved to the
new schema's ledger in the same transaction; a Delta table is a folder renamed in one step, its log (and so
the app-transaction markers a replay is checked against) inside it. Nothing is copied, so nothing can be
lost half way: either a table is at its old address or at its new one.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import psycopg
import pyarrow.compute as pc
from deltalake import DeltaTable

from engine.core.errors import ConfigError
from engine.core.sql import quote_ident
from layers.postgres import LEDGER, ledger_ddl

EXTRACTION_COLUMN = "_ipai_extraction_id"


def postgres_exists(conn: psycopg.Connection, schema: str, table: str) -> bool:
    # From the catalog, not to_regclass: that raises without USAGE on the schema, which a worker (ipai_worker)
    # has not on the layers' schemas, so looking for a pre-upgrade table would fail every run of a worker.
    return conn.execute("select exists (select 1 from pg_class c join pg_namespace n on n.oid = c.relnamespace"
                        " where n.nspname = %s and c.relname = %s)", (schema, table)).fetchone() == (True,)


def postgres_extractions(conn: psycopg.Connection, schema: str, table: str) -> set[str]:
    """The extraction ids of the rows of a bronze table (read as the layers' owner, where the role may act as
    it: a worker has no right on the tables itself)."""
    with conn.transaction():
        _as_layer_owner(conn, schema)
        return {str(r[0]) for r in conn.execute(
            f"select distinct {EXTRACTION_COLUMN} from {quote_ident(schema)}.{quote_ident(table)}")}  # type: ignore[arg-type]


def _as_layer_owner(conn: psycopg.Connection, schema: str) -> None:
    """`set local role ipai_bronze` when the role may and ipai_bronze may use `schema` (layers/postgres.py)."""
    if conn.execute("select pg_has_role('ipai_bronze', 'MEMBER') and has_schema_privilege('ipai_bronze', %s,"
                    " 'CREATE') from pg_roles where rolname = 'ipai_bronze'", (schema,)).fetchone() == (True,):
        conn.execute("set local role ipai_bronze")


def move_postgres(conn: psycopg.Connection, old: tuple[str, str], new: tuple[str, str], *,
                  ledger_table: str | None = None) -> None:
    """Move table `old` (schema, name) to `new` in one transaction; with `ledger_table` (the bronze table's
    name in the ledger), its rows in the old schema's load ledger go to the new schema's under the new name."""
    (old_schema, old_name), (new_schema, new_name) = old, new
    source, target = quote_ident(old_schema), quote_ident(new_schema)
    with conn.transaction():
        exists, helper = conn.execute(
            "select to_regnamespace(%s) is not null, to_regprocedure('ipai.create_layer_schema(text)') is not null",
            (target,)).fetchone() or (False, False)
        if not exists:
            conn.execute("select ipai.create_layer_schema(%s)" if helper else f"create schema {target}",  # type: ignore[arg-type]
                         (new_schema,) if helper else None)
        _as_layer_owner(conn, new_schema)
        conn.execute(f"alter table {source}.{quote_ident(old_name)} set schema {target}")  # type: ignore[arg-type]
        if new_name != old_name:
            conn.execute(f"alter table {target}.{quote_ident(old_name)} rename to {quote_ident(new_name)}")  # type: ignore[arg-type]
        if ledger_table is None or not postgres_exists(conn, old_schema, LEDGER):
            return
        conn.execute(ledger_ddl(target))  # type: ignore[arg-type]
        conn.execute(f"insert into {target}.{LEDGER} (table_name, commit_id, rows, loaded_at)"  # type: ignore[arg-type]
                     f" select %s, commit_id, rows, loaded_at from {source}.{LEDGER} where table_name = %s"
                     " on conflict do nothing", (new_name if ledger_table == old_name else ledger_table, ledger_table))
        conn.execute(f"delete from {source}.{LEDGER} where table_name = %s", (ledger_table,))  # type: ignore[arg-type]


def delta_exists(uri: str) -> bool:
    return DeltaTable.is_deltatable(uri)


def delta_extractions(uri: str) -> set[str]:
    """The extraction ids of the rows of a bronze Delta table."""
    table = DeltaTable(uri).to_pyarrow_dataset().to_table(columns=[EXTRACTION_COLUMN])
    return {str(v) for v in pc.unique(table.column(EXTRACTION_COLUMN)).to_pylist() if v is not None}


def move_delta(old_uri: str, new_uri: str) -> None:
    """Rename the Delta table's folder (a local lakehouse only: object stores have no rename)."""
    old, new = urlparse(old_uri), urlparse(new_uri)
    if old.scheme not in ("", "file") or new.scheme not in ("", "file"):
        raise ConfigError(f"{old_uri} must move to {new_uri}, and an object store cannot rename: copy the prefix "
                          "with your storage's tools (keeping _delta_log), delete the old one, then run again")
    source = Path(old.path if old.scheme else old_uri)
    target = Path(new.path if new.scheme else new_uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(source, target)  # one step on one file system; refuses to replace a folder that holds anything
