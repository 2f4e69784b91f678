"""Arrow into Postgres, shared by every layer: ADBC bulk loads (COPY) that fit the rows to the table (new
columns are added, a narrower numeric column is widened in place, nested values are stored as JSON text),
Postgres types of Arrow types, and acting as the role that owns the layers' schemas."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pyarrow as pa

from engine.core.sql import quote_ident

LEDGER = "_ipai_loads"


def ledger_ddl(schema_sql: str) -> str:
    """CREATE TABLE IF NOT EXISTS for the load ledger of a bronze schema (`schema_sql` already quoted)."""
    return (f"create table if not exists {schema_sql}.{LEDGER} (table_name text not null, commit_id text not null,"
            " rows bigint not null, loaded_at timestamptz not null default now(), primary key (table_name, commit_id))")
UUID_COLUMNS = ("_ipai_run_id", "_ipai_extraction_id")
"""System columns that hold uuids: text in Delta (which has no uuid type), uuid in Postgres."""
COPY_BATCH_ROWS = 65_536
"""Rows per COPY batch. The ADBC driver encodes a whole Arrow batch before sending it, so the server
idles while a large batch is encoded; batches this size let it parse one while the next is encoded
(about 20% faster here than 100k-row batches) and keep the encoded buffer small."""


def column_types(cur: Any, schema: str, table: str) -> dict[str, str]:
    """Return the columns of `schema.table` and their types (`udt_name`); empty if it does not exist."""
    cur.execute("select column_name, udt_name from information_schema.columns"
                " where table_schema = $1 and table_name = $2 order by ordinal_position", (schema, table))
    return {name: kind for name, kind in cur.fetchall()}


def ingest(cur: Any, schema: str, table: str, data: pa.Table, *, uuid_ids: bool = False) -> None:
    """COPY `data` into `schema.table` in the cursor's transaction, fitting it to the table first: columns
    it lacks are added, a narrower numeric column is widened in place (integer -> bigint -> double
    precision), nested values become JSON text, other values are cast to the column's type. The first
    load creates the table (the id system columns as uuid where `uuid_ids`, else as text)."""
    data = _nested_as_json(data)
    columns = column_types(cur, schema, table)
    if not columns:
        # The first load creates the table; two runs creating it at once would collide.
        cur.execute("select pg_advisory_xact_lock(hashtext($1))", (f"{schema}.{table}",))
        columns = column_types(cur, schema, table)
    types: dict[str, pa.DataType] = {}
    for field in data.schema:
        plain = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
        if uuid_ids and field.name in UUID_COLUMNS:
            plain = pa.uuid()
        kind = columns.get(field.name)
        if kind is None and not columns:
            types[field.name] = plain
            continue
        if kind is None:
            added = _pg_type(plain)
            cur.execute(f"alter table {quote_ident(schema)}.{quote_ident(table)}"
                        f" add column if not exists {quote_ident(field.name)} {added}")
            kind = _UDT_OF.get(added, "text")
        types[field.name] = _fit_column(cur, f"{quote_ident(schema)}.{quote_ident(table)}", field.name, plain, kind)
    cur.adbc_ingest(table, _batches(data, types, f"{schema}.{table}", columns),
                    mode="create_append", db_schema_name=schema)


def _fit_column(cur: Any, table: str, name: str, have: pa.DataType, kind: str) -> pa.DataType:
    """Return the Arrow type to send `name` as so that COPY stores it in a `kind` column (COPY's binary
    format is read as the column's type: a mismatch is refused or, worse, misread)."""
    if kind == "uuid":
        return pa.uuid()
    if kind == "numeric" and pa.types.is_integer(have):
        return pa.decimal128(38, 0)
    if kind == "numeric":
        return have  # decimals of any scale; anything else is refused when the batch is cast
    want = ARROW_OF.get(kind)
    if want is None:
        return have  # a type bronze never creates (json, arrays ...): sent as it is, as ever
    if _same_in_postgres(have, want):
        return have
    wider = _wider(kind, have)
    if wider is not None:
        cur.execute(f"alter table {table} alter column {quote_ident(name)} type {wider}")
        return ARROW_OF[_UDT_OF[wider]]
    return want


ARROW_OF = {
    "int2": pa.int16(), "int4": pa.int32(), "int8": pa.int64(), "float4": pa.float32(), "float8": pa.float64(),
    "bool": pa.bool_(), "text": pa.string(), "varchar": pa.string(), "bytea": pa.binary(), "date": pa.date32(),
    "timestamptz": pa.timestamp("us", tz="UTC"), "timestamp": pa.timestamp("us"),
}
"""Postgres column types (`udt_name`) as the Arrow types whose COPY encoding they read."""
_UDT_OF = {"integer": "int4", "bigint": "int8", "double precision": "float8", "boolean": "bool", "numeric": "numeric",
           "timestamptz": "timestamptz", "timestamp": "timestamp", "date": "date", "bytea": "bytea", "text": "text",
           "uuid": "uuid"}
"""`_pg_type`'s names (and `alter column ... type`'s) as `udt_name`."""
_INT_BITS = {"int2": 16, "int4": 32, "int8": 64}


def _same_in_postgres(have: pa.DataType, want: pa.DataType) -> bool:
    """Whether values of type `have` are sent as they are for a column read as `want`: the driver encodes
    every string and binary width, and timestamps of any unit, itself."""
    if have.equals(want):
        return True
    for kind in (_is_string, _is_binary):
        if kind(have) and kind(want):
            return True
    return (pa.types.is_timestamp(have) and pa.types.is_timestamp(want)
            and (have.tz is None) == (want.tz is None))


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)


def _wider(kind: str, have: pa.DataType) -> str | None:
    """The Postgres type a `kind` column is widened to for values of type `have`, or None (no widening)."""
    numeric = pa.types.is_integer(have) or pa.types.is_floating(have)
    if not numeric or kind not in (*_INT_BITS, "float4", "float8"):
        return None
    if pa.types.is_floating(have) or kind == "float4":
        return None if kind == "float8" else "double precision"
    bits = have.bit_width * (2 if pa.types.is_unsigned_integer(have) else 1)
    if bits <= _INT_BITS[kind]:
        return None
    return "bigint" if bits > 32 else "integer"


def _nested_as_json(table: pa.Table) -> pa.Table:
    """Return `table` with nested columns as JSON text: bronze keeps them whole, minimally typed."""
    for i, field in enumerate(table.schema):
        if pa.types.is_nested(field.type):
            text = pa.array([None if v is None else json.dumps(v, default=str) for v in table.column(i).to_pylist()],
                            pa.string())
            table = table.set_column(i, pa.field(field.name, pa.string()), text)
    return table


def _postgres_ready(table: pa.Table) -> pa.RecordBatchReader:
    """Return `table` as COPY-sized batches for a table made from it: nested columns as JSON text, the id
    system columns as uuid, dictionary columns decoded one batch at a time (silver's staging loads)."""
    table = _nested_as_json(table)
    types = {f.name: pa.uuid() if f.name in UUID_COLUMNS
             else f.type.value_type if pa.types.is_dictionary(f.type) else f.type for f in table.schema}
    return _batches(table, types, "the staging table", {})


def _batches(table: pa.Table, types: dict[str, pa.DataType], where: str,
             columns: dict[str, str]) -> pa.RecordBatchReader:
    """Return `table` as COPY-sized batches of `types`: dictionary columns decoded, text uuids as uuids,
    one batch at a time."""
    schema = pa.schema([f.with_type(types[f.name]) for f in table.schema])

    def convert(batch: pa.RecordBatch) -> pa.RecordBatch:
        out = []
        for column, field in zip(batch.columns, schema, strict=True):
            if isinstance(field.type, pa.UuidType):
                out.append(_as_uuid(column))
                continue
            try:
                out.append(column.cast(field.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise ValueError(
                    f"column {field.name}: {column.type} values cannot be stored in {where}'s"
                    f" {columns.get(field.name, field.type)} column ({exc}); change the column's type"
                    " (alter table ... alter column ... type ...) or the source's") from None
        return pa.RecordBatch.from_arrays(out, schema=schema)

    batches = (convert(b) for b in table.to_batches(max_chunksize=COPY_BATCH_ROWS))
    return pa.RecordBatchReader.from_batches(schema, batches)


def create_layer_schema(cur: Any, schema: str) -> None:
    """Create the bronze or silver `schema` where it is missing, in the caller's transaction (take an advisory
    lock first: concurrent `create schema` collide in the catalog). On a control-plane database the migrations'
    `ipai.create_layer_schema` makes it, owned by `ipai_bronze`, for any role that syncs (a worker may not
    create schemas itself); elsewhere the connecting role creates it."""
    cur.execute("select to_regnamespace($1) is null, to_regprocedure('ipai.create_layer_schema(text)') is not null",
                (quote_ident(schema),))
    missing, helper = cur.fetchone()
    if not missing:
        return
    if helper:
        cur.execute("select ipai.create_layer_schema($1)", (schema,))
    else:
        cur.execute(f"create schema if not exists {quote_ident(schema)}")


def load_as_layer_owner(cur: Any, schema: str) -> None:
    """Where the control plane's migrations made the layers' owner role (`ipai_bronze`, owner of the bronze and
    silver schemas), act as it for the rest of the session: tables then belong to one role whoever runs the
    sync (a worker, the CLI), and any of them can alter them."""
    cur.execute(
        "select coalesce((select pg_has_role(oid, 'MEMBER') and has_schema_privilege(oid, $1, 'CREATE')"
        " from pg_roles where rolname = 'ipai_bronze'), false)", (schema,))
    if cur.fetchone()[0]:
        cur.execute("set role ipai_bronze")


def _as_uuid(column: pa.Array) -> pa.Array:
    """Return text uuids as Arrow uuids (16 bytes a row in Postgres instead of 37)."""
    if not pa.types.is_dictionary(column.type):
        column = column.dictionary_encode()  # a run's rows share a handful of ids: parse each once
    values, indices = column.dictionary, column.indices
    raw = pa.array([None if v is None else uuid.UUID(v).bytes for v in values.to_pylist()], pa.binary(16))
    return pa.ExtensionArray.from_storage(pa.uuid(), raw.take(indices))


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
