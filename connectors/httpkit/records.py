"""JSON records to Arrow: bronze keeps what the API said, one column per top-level field.

Scalars keep their JSON type (bool, int64, float64, string); objects and arrays are kept as JSON text
(silver flattens what a stream declares). Declared types (`schema:` in a stream spec) win; a value
that does not fit its declared type fails the partition, naming the field, the record and the URL.
A field whose values disagree in type within a batch is kept as text, and a field that is always
null is typed string, so batches of one stream stay compatible with each other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from connectors.httpkit.errors import HttpFailed

ARROW = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_(),
         "json": pa.string()}


def _kind(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64" if -(2**63) <= value < 2**63 else "big"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    return "json"


def _json_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def to_batch(records: Sequence[Mapping[str, Any]], declared: Mapping[str, str], *, where: str) -> pa.RecordBatch:
    """Return `records` as one record batch; `where` (the URL) names the page in errors."""
    names: dict[str, None] = dict.fromkeys(declared)
    for r in records:
        if not isinstance(r, dict):
            raise HttpFailed(f"{where}: expected JSON objects as records, got {type(r).__name__} "
                             f"{_snippet(r)}; check the stream's `records` path")
        names.update(dict.fromkeys(r))
    arrays, fields = [], []
    for name in names:
        values = [r.get(name) for r in records]
        kind = declared.get(name) or _infer(values)
        arrays.append(_column(name, values, kind, records, where))
        fields.append(pa.field(name, ARROW[kind]))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def _infer(values: list[Any]) -> str:
    kinds = {k for k in map(_kind, values) if k is not None}
    if not kinds:
        return "string"
    if len(kinds) == 1:
        kind = kinds.pop()
        return "json" if kind == "big" else kind
    if kinds <= {"int64", "float64"}:
        return "float64"
    return "json"


def _column(name: str, values: list[Any], kind: str, records: Sequence[Mapping[str, Any]], where: str) -> pa.Array:
    if kind in ("json", "string") and any(v is not None and not isinstance(v, str) for v in values):
        values = [_json_text(v) for v in values]
    try:
        return pa.array(values, type=ARROW[kind])
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        for i, v in enumerate(values):
            try:
                pa.array([v], type=ARROW[kind])
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                raise HttpFailed(f"{where}: field {name!r} of record {i} is {_snippet(v)}, which does not fit its "
                                 f"declared type {kind}; record: {_snippet(records[i])}. Fix the stream's "
                                 "`schema` (or declare the field json)") from None
        raise


def _snippet(value: Any, limit: int = 200) -> str:
    text = _json_text(value) if not isinstance(value, str) else json.dumps(value)
    text = text or "null"
    return text[:limit] + ("..." if len(text) > limit else "")
