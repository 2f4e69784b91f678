"""Schema evolution for silver, decided once in Arrow terms against the table's current schema.

For each incoming column:
- new: added (Delta and Postgres gain a nullable column);
- the same type, or one that fits losslessly into silver's (int32 into int64): cast to silver's type;
- a safe widening of silver's type (int -> bigint -> double, float -> double, string -> large string,
  a wider decimal, a struct with new fields): silver's column is widened in place;
- anything else (text where silver has numbers ...): each value is cast to silver's type; the rows
  whose value does not fit are quarantined with the column, the value and the reason, and the rest go on.
A column silver has and the chunk lacks (dropped at the source) stays, null in the new versions.
Rows with a null primary key cannot be merged: they are quarantined too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class Quarantined:
    """Rows that could not enter silver: the key, `_ipai_reason`, `_ipai_column`, `_ipai_value`, `_ipai_row`."""

    rows: pa.Table


def conform(rows: pa.Table, declared: pa.Schema | None, *, key: Sequence[str]
            ) -> tuple[pa.Table, Quarantined | None, list[str]]:
    """Return `rows` fitted to `declared` (silver's schema, None before its first write), the rows set
    aside, and the schema changes to apply (`widen <column> <old> -> <new>`, `add <column> <type>`)."""
    bad: list[pa.Table] = []
    missing_key = [k for k in key if k not in rows.column_names]
    if missing_key:
        raise ValueError(f"the stream's primary key {list(key)} is not in its rows (missing {missing_key}); "
                         "fix the primary key in the connector or the spec")
    null_key = pc.is_null(rows.column(key[0]))
    for k in key[1:]:
        null_key = pc.or_(null_key, pc.is_null(rows.column(k)))
    if pc.any(null_key).as_py():
        bad.append(set_aside(rows.filter(null_key), key, "the primary key is null", key[0]))
        rows = rows.filter(pc.invert(null_key))
    changes: list[str] = []
    if declared is not None:
        for name in rows.column_names:
            i = rows.schema.get_field_index(name)
            new = rows.schema.field(i).type
            if name not in declared.names:
                changes.append(f"add {name} {new}")
                continue
            old = declared.field(name).type
            if old.equals(new) or name.startswith("_ipai_"):
                continue
            unified = _unified(old, new)
            if unified is not None and unified.equals(old):
                rows = rows.set_column(i, declared.field(name), rows.column(i).cast(old))
            elif unified is not None:
                changes.append(f"widen {name} {old} -> {unified}")
                rows = rows.set_column(i, pa.field(name, unified), rows.column(i).cast(unified))
            else:
                fitted, failed = _cast_values(rows.column(i), old)
                if pc.any(failed).as_py():
                    bad.append(set_aside(rows.filter(failed), key, f"a value of {name} ({new}) does not fit "
                                          f"silver's type {old}", name))
                    rows = rows.filter(pc.invert(failed))
                    fitted = fitted.filter(pc.invert(failed))
                rows = rows.set_column(i, declared.field(name), fitted)
        for field in declared:
            if field.name not in rows.column_names:
                rows = rows.append_column(field, pa.nulls(rows.num_rows, field.type))
    quarantined = Quarantined(pa.concat_tables(bad, promote_options="permissive")) if bad else None
    return rows, quarantined, changes


def _unified(old: pa.DataType, new: pa.DataType) -> pa.DataType | None:
    """The type both fit in without loss of meaning (Arrow's permissive promotion), or None."""
    if pa.types.is_null(old):
        return new
    if (pa.types.is_integer(old) or pa.types.is_floating(old)) != (pa.types.is_integer(new) or pa.types.is_floating(new)):
        return None  # numbers and text never unify: that is a change of meaning, not a widening
    try:
        schema = pa.unify_schemas([pa.schema([pa.field("c", old)]), pa.schema([pa.field("c", new)])],
                                  promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    return schema.field("c").type


def _cast_values(column: pa.ChunkedArray, to: pa.DataType) -> tuple[pa.ChunkedArray, pa.Array]:
    """Cast value by value: the cast column (null where a value did not fit) and the mask of those values."""
    try:
        series = pl.from_arrow(column)
        assert isinstance(series, pl.Series)
        target = pl.from_arrow(pa.nulls(0, to))
        assert isinstance(target, pl.Series)
        cast = series.cast(target.dtype, strict=False).to_arrow().cast(to)
    except Exception:  # noqa: BLE001 - a type polars cannot cast: no value fits
        cast = pa.nulls(len(column), to)
    failed = pc.and_(pc.is_valid(column), pc.is_null(cast))
    return pa.chunked_array([cast]), failed


def set_aside(rows: pa.Table, key: Sequence[str], reason: str, column: str) -> pa.Table:
    values = rows.column(column).to_pylist()
    records = rows.to_pylist()
    out = {k: pa.array([None if v is None else str(v) for v in rows.column(k).to_pylist()], pa.string()) for k in key}
    out["_ipai_reason"] = pa.array([reason] * rows.num_rows, pa.string())
    out["_ipai_column"] = pa.array([column] * rows.num_rows, pa.string())
    out["_ipai_value"] = pa.array([None if v is None else str(v)[:1000] for v in values], pa.string())
    out["_ipai_row"] = pa.array([json.dumps(r, default=str) for r in records], pa.string())
    for name in ("_ipai_run_id", "_ipai_extracted_at"):
        if name in rows.column_names:
            out[name] = rows.column(name).combine_chunks()
    return pa.table(out)
