"""Read a `runReport` body as GA4 does (../shared/api-contracts/ga4.md section 3) and word its errors.

Validation failures raise `Invalid` with the message of a 400 INVALID_ARGUMENT answer; every message names
the offending field. The wording of Google's own messages is quoted where it is well known (unknown JSON
names, int64 values, unknown dimensions and metrics); the rest is our assumption in the same style.
Fields the emulator cannot honour fail loudly (filters, cohorts, comparisons, expressions) rather than
being silently ignored; `orderBys`, `metricAggregations` and `currencyCode` are accepted and ignored (rows
always come sorted by dimension values), which the request log notes.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from tests.emulators.ga4.schema import DIMENSIONS, METRICS

MAX_DIMENSIONS = 9
MAX_METRICS = 10
MAX_DATE_RANGES = 4
DEFAULT_LIMIT = 10_000
MAX_LIMIT = 250_000

_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
           429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 501: "UNIMPLEMENTED", 502: "UNAVAILABLE",
           503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_SCHEMA_DOCS = "https://developers.google.com/analytics/devguides/reporting/data/v1/api-schema"
_KNOWN = {"property", "dimensions", "metrics", "dateRanges", "offset", "limit", "dimensionFilter", "metricFilter",
          "orderBys", "metricAggregations", "keepEmptyRows", "returnPropertyQuota", "currencyCode", "cohortSpec",
          "comparisons"}
_UNSUPPORTED = ("dimensionFilter", "metricFilter", "cohortSpec", "comparisons")
_IGNORED = ("orderBys", "metricAggregations", "currencyCode")
_DAYS_AGO = re.compile(r"(\d+)daysAgo")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_INT64 = re.compile(r"-?\d+")


def google_error(code: int, message: str) -> dict[str, Any]:
    """Google's error body (contract section 8)."""
    status = _STATUS.get(code, "UNAVAILABLE" if code >= 500 else "UNKNOWN")
    return {"error": {"code": code, "message": message, "status": status}}


class Invalid(ValueError):
    """The request is malformed: answer 400 INVALID_ARGUMENT with this message."""


@dataclass(frozen=True)
class ReportRequest:
    """A validated `runReport` body; dates are day ordinals, resolved against the emulated today."""

    ranges: tuple[tuple[int, int], ...]
    range_names: tuple[str, ...]
    dimensions: tuple[str, ...]
    metrics: tuple[str, ...]
    offset: int
    limit: int
    keep_empty: bool
    return_quota: bool
    ignored: tuple[str, ...]

    @property
    def thresholded(self) -> bool:
        return any(DIMENSIONS[name].thresholded for name in self.dimensions)


def parse_date(value: Any, today: int, field: str) -> int:
    """`YYYY-MM-DD`, `today`, `yesterday` or `NdaysAgo` as a day ordinal."""
    if value == "today":
        return today
    if value == "yesterday":
        return today - 1
    if isinstance(value, str):
        relative = _DAYS_AGO.fullmatch(value)
        if relative:
            return today - int(relative.group(1))
        if _ISO_DATE.fullmatch(value):
            try:
                return dt.date.fromisoformat(value).toordinal()
            except ValueError:
                pass
    raise Invalid(f"Invalid date {value!r} in {field}: use YYYY-MM-DD, today, yesterday or NdaysAgo.")


def _int64(body: dict[str, Any], field: str, default: int) -> int:
    # proto3 JSON: an int64 may be a number or a string of digits.
    value = body.get(field, default)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT64.fullmatch(value):
        return int(value)
    raise Invalid(f"Invalid value at '{field}' (TYPE_INT64), {_quoted(value)}")


def _bool(body: dict[str, Any], field: str) -> bool:
    value = body.get(field, False)
    if not isinstance(value, bool):
        raise Invalid(f"Invalid value at '{field}' (TYPE_BOOL), {_quoted(value)}")
    return value


def _quoted(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def _names(body: dict[str, Any], field: str, kind: str, known: Any, most: int) -> tuple[str, ...]:
    items = body.get(field, [])
    if not isinstance(items, list):
        raise Invalid(f"Invalid value at '{field}': expected a list of {{\"name\": ...}} objects.")
    names: list[str] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise Invalid(f"Invalid value at '{field}[{i}]': expected an object with a string 'name'.")
        extra = set(item) - {"name"}
        if extra:
            raise Invalid(f"{field}[{i}].{sorted(extra)[0]} is not supported by the GA4 emulator; request "
                          f"{kind}s by name only.")
        name = item["name"]
        if name not in known:
            raise Invalid(f"Field {name} is not a valid {kind}. For a list of valid dimensions and metrics, see "
                          f"{_SCHEMA_DOCS} ")
        if name in names:
            raise Invalid(f"Duplicate {kind} name {name} in {field}: each {kind} may be requested once.")
        names.append(name)
    if len(names) > most:
        raise Invalid(f"Requests are limited to {most} {kind}s in {field}; this request has {len(names)}.")
    return tuple(names)


def _date_ranges(body: dict[str, Any], today: int) -> tuple[tuple[tuple[int, int], ...], tuple[str, ...]]:
    ranges = body.get("dateRanges")
    if not isinstance(ranges, list) or not ranges:
        raise Invalid("dateRanges must list at least one date range (startDate, endDate) for a report.")
    if len(ranges) > MAX_DATE_RANGES:
        raise Invalid(f"Requests are limited to {MAX_DATE_RANGES} dateRanges; this request has {len(ranges)}.")
    spans, names = [], []
    for i, item in enumerate(ranges):
        where = f"dateRanges[{i}]"
        if not isinstance(item, dict):
            raise Invalid(f"Invalid value at '{where}': expected an object with startDate and endDate.")
        unknown = set(item) - {"startDate", "endDate", "name"}
        if unknown:
            raise Invalid(f'Invalid JSON payload received. Unknown name "{sorted(unknown)[0]}" at \'{where}\': '
                          "Cannot find field.")
        start = parse_date(item.get("startDate"), today, f"{where}.startDate")
        end = parse_date(item.get("endDate"), today, f"{where}.endDate")
        if start > end:
            raise Invalid(f"{where}.startDate ({item['startDate']}) is after {where}.endDate ({item['endDate']}).")
        name = item.get("name", f"date_range_{i}")
        if "name" in item and (not isinstance(name, str) or name.startswith(("date_range_", "RESERVED_"))):
            raise Invalid(f"{where}.name must be a string not beginning with date_range_ or RESERVED_.")
        spans.append((start, end))
        names.append(name)
    return tuple(spans), tuple(names)


def parse_report_request(body: Any, *, property_id: str, today: int) -> ReportRequest:
    """Validate a `runReport` body; raise Invalid naming the first problem."""
    if not isinstance(body, dict):
        raise Invalid("Invalid JSON payload received. Expected an object (RunReportRequest).")
    unknown = sorted(set(body) - _KNOWN)
    if unknown:
        raise Invalid(f'Invalid JSON payload received. Unknown name "{unknown[0]}": Cannot find field.')
    unsupported = [name for name in _UNSUPPORTED if name in body]
    if unsupported:
        raise Invalid(f"{unsupported[0]} is not supported by the GA4 emulator; it would change the rows.")
    if "property" in body and body["property"] != f"properties/{property_id}":
        raise Invalid(f"property {body['property']!r} does not match the property in the URL "
                      f"(properties/{property_id}).")
    dimensions = _names(body, "dimensions", "dimension", DIMENSIONS, MAX_DIMENSIONS)
    metrics = _names(body, "metrics", "metric", METRICS, MAX_METRICS)
    if not dimensions and not metrics:
        raise Invalid("A report needs at least one dimension or metric in dimensions or metrics.")
    ranges, names = _date_ranges(body, today)
    offset = _int64(body, "offset", 0)
    if offset < 0:
        raise Invalid(f"offset must be >= 0; got {offset}.")
    limit = _int64(body, "limit", 0)
    if limit < 0:
        raise Invalid(f"limit must be positive; got {limit}.")
    # proto3: 0 is "not set", which means the default page; more than the cap is silently capped (section 5).
    limit = min(limit or DEFAULT_LIMIT, MAX_LIMIT)
    return ReportRequest(ranges, names, dimensions, metrics, offset, limit, _bool(body, "keepEmptyRows"),
                         _bool(body, "returnPropertyQuota"), tuple(name for name in _IGNORED if name in body))
