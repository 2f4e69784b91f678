"""Lift declared nested fields into silver columns of their own.

A path names the stream's column and then the keys inside it: `user.login`. The column may hold JSON
text (HTTP sources keep objects as JSON in bronze) or an Arrow struct (database sources). The value is
parsed as the declared type; one that does not parse sets its row aside (quarantine) with the column,
the value and the reason, instead of landing as a silent null.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from layers.silver.evolve import Quarantined, set_aside

TYPES = {"string": pl.String, "int64": pl.Int64, "float64": pl.Float64, "bool": pl.Boolean}
ARROW = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_(),
         "timestamp": pa.timestamp("us", tz="UTC"), "date": pa.date32()}


def flatten(table: pa.Table, fields: Sequence[tuple[str, str, str]], *, key: Sequence[str]
            ) -> tuple[pa.Table, Quarantined | None]:
    """Return `table` with a column per (column, path, type) field, and the rows whose value did not parse."""
    frame = pl.from_arrow(table.select(sorted({p.split(".")[0] for _, p, _ in fields if p.split(".")[0]
                                               in table.column_names})), rechunk=False)
    assert isinstance(frame, pl.DataFrame)
    bad: list[pa.Table] = []
    for column, path, kind in fields:
        source, *keys = path.split(".")
        if source not in table.column_names:
            raise ValueError(f"silver.flatten: {column} reads {path!r}, but the stream has no column {source!r}; "
                             f"its columns: {', '.join(c for c in table.column_names if not c.startswith('_ipai_'))}")
        raw = _extract(frame, source, keys)
        parsed = frame.select(_parse(raw, kind)).to_series()
        text = frame.select(raw).to_series()
        failed = pc.and_(pc.is_valid(text.to_arrow()), pc.is_null(parsed.to_arrow()))
        value = parsed.to_arrow().cast(ARROW[kind])
        table = table.append_column(column, value)
        if pc.any(failed).as_py():
            rejected = table.filter(failed)
            rejected = rejected.set_column(rejected.schema.get_field_index(column), pa.field(column, pa.string()),
                                           text.to_arrow().cast(pa.string()).filter(failed))
            bad.append(set_aside(rejected, key, f"flatten {column}: {path} does not parse as {kind}", column))
            keep = pc.invert(failed)
            table, frame = table.filter(keep), frame.filter(pl.Series(keep.to_pylist()))
    return table, Quarantined(pa.concat_tables(bad, promote_options="permissive")) if bad else None


def _extract(frame: pl.DataFrame, source: str, keys: list[str]) -> pl.Expr:
    """The field's value as text (JSON scalars unquoted), null where the path leads nowhere."""
    if frame.schema[source] == pl.String:
        return pl.col(source).str.json_path_match("$." + ".".join(keys))
    expr = pl.col(source)
    for k in keys:
        expr = expr.struct.field(k)
    return expr.cast(pl.String)


def _parse(text: pl.Expr, kind: str) -> pl.Expr:
    if kind == "timestamp":
        return text.str.to_datetime(time_zone="UTC", strict=False, time_unit="us")
    if kind == "date":
        return text.str.to_date(strict=False)
    if kind == "bool":
        return text.str.to_lowercase().replace_strict({"true": True, "false": False}, default=None,
                                                    return_dtype=pl.Boolean)
    return text.cast(TYPES[kind], strict=False)
