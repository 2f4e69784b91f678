"""Schema drift at the bronze writer.
Schema drift is decided once per batch, in Arrow terms, against the stored table's schema (Delta's,
else Postgres'), so both destinations take the same rows:

- a new column, a new struct field, a column the partition lacks: the table evolves (added, or null);
- a value of another type that fits the column's type without loss (int32 in int64, int in double,
  2.0 in int64, '7' in int64, 7 in text, a nested value in text as JSON): cast to the column's type;
  Delta cannot change a column's type in place, so bronze keeps the stored type;
- a value that does not fit (2.5 or 'n/a' in int64, text where a struct was): its row is set aside,
  whole, in the quarantine table `quarantine_<name>` (`<lakehouse>/bronze/quarantine_<name>` and
  `<bronze schema>.quarantine_<name>`, shared with silver's quarantine) with `_ipai_reason`,
  `_ipai_column`, `_ipai_value` and `_ipai_row` (the row as JSON text), and the rest goes on.
Where Postgres alone holds bronze, its numeric columns widen in place instead (integer -> bigint ->
double precision) and nested columns are JSON text of any shape. Columns new in a batch take the
widest of the partitions' numeric types.

A partition's quarantined rows are written exactly once: in Postgres in the same transaction as its
rows and its ledger entry; in Delta only while its bronze marker is absent, under its own marker
`<commit id>:quarantine`, before the bronze commit (a crash in between replays the bronze commit only).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

SYSTEM_COLUMNS = ("_ipai_run_id", "_ipai_extraction_id", "_ipai_partition", "_ipai_extracted_at")


@dataclass(frozen=True)
class Conformed:
    """A partition fitted to the bronze table: the rows it takes and the rows set aside."""

    rows: pa.Table
    quarantine: pa.Table | None = None
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def quarantined(self) -> int:
        return 0 if self.quarantine is None else self.quarantine.num_rows


def conform_batch(tables: Sequence[pa.Table], stored: pa.Schema | None, *,
                  stored_in_postgres: bool = False) -> list[Conformed]:
    """Fit each partition of a batch to the bronze table's schema (`stored`, None before the first write).

    `stored_in_postgres`: the schema is Postgres' (no Delta table), so numeric columns may widen in
    place and nested values are JSON text whatever their shape.
    """
    schema = batch_schema([t.schema for t in tables], stored, stored_in_postgres=stored_in_postgres)
    return [_conform(t, schema) for t in tables]


def batch_schema(schemas: Sequence[pa.Schema], stored: pa.Schema | None, *,
                 stored_in_postgres: bool = False) -> pa.Schema:
    """The schema a batch is written in: the stored columns, their struct fields gaining what partitions
    bring; new columns as the partitions have them (the widest numeric type when they differ)."""
    types: dict[str, pa.DataType] = {f.name: f.type for f in stored} if stored is not None else {}
    fixed = set() if stored_in_postgres else set(types)
    for schema in schemas:
        for f in schema:
            new = _plain(f.type)
            if f.name not in types:
                types[f.name] = new
            elif stored_in_postgres and _is_text(types[f.name]) and pa.types.is_nested(new):
                types[f.name] = new  # Postgres keeps nested values as JSON text: any shape fits
            else:
                types[f.name] = _target(types[f.name], new, widen=f.name not in fixed)
    return pa.schema([pa.field(name, t) for name, t in types.items()])


def _conform(table: pa.Table, schema: pa.Schema) -> Conformed:
    """Cast each column to `schema`'s type; a row with a value that does not fit is set aside (once, under
    the first such column)."""
    rows = table
    held: list[pa.Table] = []
    reasons: dict[str, int] = {}
    for name in table.column_names:
        to = schema.field(name).type
        i = rows.schema.get_field_index(name)
        column = rows.column(i)
        if column.type.equals(to) or (_same(column.type, to) and not pa.types.is_nested(to)):
            continue  # as stored (a dictionary column is decoded by the writers, batch by batch)
        fitted, failed = _fit(column.combine_chunks(), to)
        if failed is not None and pc.any(failed).as_py():
            bad = rows.filter(failed)
            held.append(_set_aside(bad, name, column.type, to))
            reasons[f"column {name}: {_plain(column.type)} does not fit {to}"] = bad.num_rows
            keep = pc.invert(failed)
            rows, fitted = rows.filter(keep), fitted.filter(keep)
        rows = rows.set_column(i, pa.field(name, to), fitted)
    quarantine = pa.concat_tables(held, promote_options="permissive") if held else None
    return Conformed(rows, quarantine, reasons)


def _target(old: pa.DataType, new: pa.DataType, *, widen: bool) -> pa.DataType:
    """The type a stored `old` column takes when values of type `new` arrive: `old` with the struct
    fields `new` adds, or (`widen`) the wider numeric type."""
    if _same(old, new) or pa.types.is_null(new):
        return old
    if pa.types.is_null(old):
        return new
    if pa.types.is_struct(old) and pa.types.is_struct(new):
        incoming = {f.name: f.type for f in new}
        names = {f.name for f in old}
        return pa.struct(
            [pa.field(f.name, _target(f.type, incoming[f.name], widen=widen) if f.name in incoming else f.type)
             for f in old]
            + [pa.field(f.name, f.type) for f in new if f.name not in names])
    if _is_list(old) and _is_list(new):
        value = _target(old.value_type, new.value_type, widen=widen)
        return pa.large_list(value) if pa.types.is_large_list(old) else pa.list_(value)
    if widen and _numbers(old) is not None and _numbers(old) == _numbers(new):
        try:
            unified = pa.unify_schemas([pa.schema([("c", old)]), pa.schema([("c", new)])],
                                       promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            return old
        return unified.field("c").type
    return old


def _fit(column: pa.Array, to: pa.DataType) -> tuple[pa.Array, pa.BooleanArray | None]:
    """Cast `column` to `to` without loss: the cast values and the mask of values that do not fit (None
    when all do); a value that does not fit is null in the cast."""
    source = column.type
    if _same(source, to) and not pa.types.is_nested(to):
        return column.cast(to), None
    try:
        cast = pc.cast(column, to, safe=True)
        if _is_text(source) or _is_text(to) or pc.cast(cast, source, safe=False).equals(column):
            return cast, None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        pass
    if pa.types.is_struct(source) and pa.types.is_struct(to):
        return _fit_struct(column, to)
    if _is_list(source) and _is_list(to):
        return _fit_list(column, to)
    if _is_text(to) and pa.types.is_nested(source):
        return pa.array([None if v is None else json.dumps(v, default=str) for v in column.to_pylist()], to), None
    failed = _misfits(column, to)
    if not pc.any(pc.and_(pc.is_valid(column), pc.invert(failed))).as_py():
        return pa.nulls(len(column), to), failed  # no value fits (nor may Arrow cast the type at all)
    kept = pc.if_else(failed, pa.nulls(len(column), source), column)
    try:
        return pc.cast(kept, to, safe=True), failed
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        failed = _misfits_one_by_one(column, to)  # a faster check let a value through that Arrow refuses
        return pc.cast(pc.if_else(failed, pa.nulls(len(column), source), column), to, safe=True), failed


def _fit_struct(column: pa.Array, to: pa.DataType) -> tuple[pa.Array, pa.BooleanArray | None]:
    children = {f.name: child for f, child in zip(column.type, column.flatten(), strict=True)}
    failed = None
    out = []
    for f in to:
        if f.name not in children:
            out.append(pa.nulls(len(column), f.type))
            continue
        cast, bad = _fit(children[f.name], f.type)
        out.append(cast)
        if bad is not None:
            failed = bad if failed is None else pc.or_(failed, bad)
    return pa.StructArray.from_arrays(out, fields=list(to), mask=pc.is_null(column)), failed


def _fit_list(column: pa.Array, to: pa.DataType) -> tuple[pa.Array, pa.BooleanArray | None]:
    values, bad = _fit(column.flatten(), to.value_type)
    offsets = pc.subtract(column.offsets, column.offsets[0])
    kind = pa.LargeListArray if pa.types.is_large_list(to) else pa.ListArray
    offsets = offsets.cast(pa.int64() if kind is pa.LargeListArray else pa.int32())
    cast = kind.from_arrays(offsets, values, type=to, mask=pc.is_null(column))
    if bad is None:
        return cast, None
    rows = pc.list_parent_indices(column).filter(bad)
    return cast, pc.is_in(pa.array(range(len(column)), pa.int64()), value_set=rows.cast(pa.int64()))


def _misfits(column: pa.Array, to: pa.DataType) -> pa.BooleanArray:
    """The mask of values that do not fit `to`, vectorised where it can be."""
    source = column.type
    try:
        pc.cast(column.slice(0, 0), to)
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return pc.is_valid(column)  # Arrow casts no value of this type to `to` (text to a struct ...)
    if _numbers(source) == "number" and _numbers(to) == "number":
        # A value fits if it survives the round trip: 2.5 -> 2 -> 2.0 does not, nor NaN, nor 2**53 + 1.
        back = pc.cast(pc.cast(column, to, safe=False), source, safe=False)
        return pc.and_(pc.is_valid(column), pc.invert(pc.fill_null(pc.equal(back, column), False)))
    if _is_text(source):
        try:
            series = pl.from_arrow(column)
            target = pl.from_arrow(pa.nulls(0, to))
            assert isinstance(series, pl.Series) and isinstance(target, pl.Series)
            cast = series.cast(target.dtype, strict=False).to_arrow()
            return pc.and_(pc.is_valid(column), pc.is_null(cast))
        except Exception:  # noqa: BLE001 - a type polars cannot parse text into: checked value by value
            pass
    return _misfits_one_by_one(column, to)


def _misfits_one_by_one(column: pa.Array, to: pa.DataType) -> pa.BooleanArray:
    source = column.type
    out = []
    for i in range(len(column)):
        if not column[i].is_valid:
            out.append(False)
            continue
        value = column.slice(i, 1)
        try:
            cast = pc.cast(value, to, safe=True)
            out.append(not (_is_text(source) or _is_text(to) or pc.cast(cast, source, safe=False).equals(value)))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            out.append(True)
    return pa.array(out, pa.bool_())


def _set_aside(rows: pa.Table, column: str, source: pa.DataType, to: pa.DataType) -> pa.Table:
    """The quarantine rows for `rows`, whose `column` value does not fit `to`."""
    values = rows.column(column).to_pylist()
    out: dict[str, Any] = {
        "_ipai_reason": pa.array([f"column {column}: value {_shown(v)} ({_plain(source)}) does not fit {to}"
                                  for v in values], pa.string()),
        "_ipai_column": pa.array([column] * rows.num_rows, pa.string()),
        "_ipai_value": pa.array([_text(v)[:1000] for v in values], pa.string()),
        "_ipai_row": pa.array([json.dumps(r, default=str) for r in rows.to_pylist()], pa.string()),
    }
    for name in SYSTEM_COLUMNS:
        if name in rows.column_names:
            system = rows.column(name)
            out[name] = system.cast(_plain(system.type)).combine_chunks()
    return pa.table(out)


def _shown(value: Any) -> str:
    """The value as a reason shows it: text quoted ('n/a'), nested values as JSON, others as written."""
    text = repr(value) if isinstance(value, (str, bytes)) else _text(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _text(value: Any) -> str:
    return json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)


def _plain(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _same(a: pa.DataType, b: pa.DataType) -> bool:
    """Whether a column of type `a` is stored as one of type `b` (Delta and Postgres make no difference
    between string widths, list field names, timestamp units or dictionary encoding)."""
    return _stored_as(a).equals(_stored_as(b))


def _stored_as(t: pa.DataType) -> pa.DataType:
    t = _plain(t)
    if _is_text(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_timestamp(t):
        return pa.timestamp("us", tz=None if t.tz is None else "UTC")
    if _is_list(t):
        return pa.list_(_stored_as(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _stored_as(f.type)) for f in t])
    return t


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def _numbers(t: pa.DataType) -> str | None:
    """The family within which a numeric type may widen: integers and floats, or decimals."""
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return "number"
    if pa.types.is_decimal(t):
        return "decimal"
    return None
