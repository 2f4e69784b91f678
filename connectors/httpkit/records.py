"""JSON records to Arrow: bronze keeps what the API said, one column per top-level field.

Scalars keep their JSON type (bool, int64, float64, string); objects and arrays are kept as JSON text
(silver flattens what a stream declares). Declared types (`schema:` in a stream spec) win; a value
that does not fit its declared type fails the partition, naming the field, the record and the URL.
A field whose values disagree in type within a batch is kept as text, and a field that is always
null is typed string, so batches of one stream stay compatible with each other.

This is the HTTP connectors' hot path: types are inferred by Arrow in C over a whole column, and JSON
is parsed and re-encoded with orjson; only columns that hold objects or mixed types are walked here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pyarrow as pa

from connectors.httpkit.errors import HttpFailed

ARROW = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_(),
         "json": pa.string()}
DIGITS_AS_ZEROS = bytes.maketrans(b"123456789", b"000000000")
TWENTY_DIGITS = b"0" * 20
CONVERSION_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError)


def loads(body: bytes) -> Any:
    """Parse a JSON body (raises ValueError when it is not JSON).

    orjson turns integers past 64 bits into doubles, losing digits; a body that may hold one (a run of 20
    or more digits) is parsed by the standard library instead, which keeps them exact.
    """
    # A translate and a substring search, both in C: a tenth of a regular expression's cost on a page.
    if TWENTY_DIGITS in body.translate(DIGITS_AS_ZEROS):
        return json.loads(body)
    return orjson.loads(body)


def _json_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # integers past 64 bits
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def to_batch(records: Sequence[Mapping[str, Any]], declared: Mapping[str, str], *, where: str) -> pa.RecordBatch:
    """Return `records` as one record batch; `where` (the URL) names the page in errors."""
    names: dict[str, None] = dict.fromkeys(declared)
    for r in records:
        if not isinstance(r, dict):
            raise HttpFailed(f"{where}: expected JSON objects as records, got {type(r).__name__} "
                             f"{_snippet(r)}; check the stream's `records` path")
        names.update(dict.fromkeys(r))
    arrays = []
    for name in names:
        values = [r.get(name) for r in records]
        kind = declared.get(name)
        arrays.append(_declared(name, values, kind, records, where) if kind else _inferred(values))
    return pa.RecordBatch.from_arrays(arrays, names=list(names))


def _inferred(values: list[Any]) -> pa.Array:
    try:
        array = pa.array(values)
    except CONVERSION_ERRORS:  # mixed types, or integers past int64: keep the text
        return pa.array([_json_text(v) for v in values], pa.string())
    kind = array.type
    if pa.types.is_null(kind):
        return pa.nulls(len(values), pa.string())
    if pa.types.is_nested(kind) or pa.types.is_unsigned_integer(kind) or (
            pa.types.is_floating(kind) and any(type(v) is int and not -(2**63) <= v < 2**63 for v in values)):
        # Objects stay JSON; integers past int64 stay exact as text (Arrow would round them to doubles).
        return pa.array([_json_text(v) for v in values], pa.string())
    return array


def _declared(name: str, values: list[Any], kind: str, records: Sequence[Mapping[str, Any]], where: str) -> pa.Array:
    if kind in ("json", "string") and any(v is not None and not isinstance(v, str) for v in values):
        values = [_json_text(v) for v in values]
    try:
        return pa.array(values, type=ARROW[kind])
    except CONVERSION_ERRORS:
        for i, v in enumerate(values):
            try:
                pa.array([v], type=ARROW[kind])
            except CONVERSION_ERRORS:
                raise HttpFailed(f"{where}: field {name!r} of record {i} is {_snippet(v)}, which does not fit its "
                                 f"declared type {kind}; record: {_snippet(records[i])}. Fix the stream's "
                                 "`schema` (or declare the field json)") from None
        raise


def _snippet(value: Any, limit: int = 200) -> str:
    text = (_json_text(value) if not isinstance(value, str) else json.dumps(value)) or "null"
    return text[:limit] + ("..." if len(text) > limit else "")
