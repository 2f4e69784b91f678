"""Google Analytics 4 (FR-024): `runReport` with configured dimensions and metrics, one partition per
property and day.

Quirks, per ../shared/api-contracts/ga4.md:
- POST `/v1beta/properties/{id}:runReport`; the date range, dimensions and metrics go in the JSON body,
  and so do `offset`/`limit`, sent as strings (int64 fields; s.3); paging stops at `rowCount` (s.5);
- every value is a string inside `{"value": ...}`; metric types are only in `metricHeaders`, so metrics
  are typed here (integers may come as floats and are rounded, as Airbyte does; s.4); `date` comes as
  `YYYYMMDD` and lands as `YYYY-MM-DD`;
- data of the last 24-72 h is still being processed: each run re-reads `lookback_days` (s.9);
- quotas are tokens per property per hour and per day, reported in `propertyQuota` when asked for, which
  feeds the credential's budget under the property's scope (one property's spent quota holds only that
  property's requests); an exhausted daily quota parks the run until midnight Pacific time instead of
  failing the backfill (s.7); each quota message implies its own wait (Airbyte's api_quota.py).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Literal

from pydantic import Field, field_validator

from connectors.httpkit import (
    DateWindows, ErrorRule, HttpApi, HttpSource, HttpStream, HttpStreamSpec, Incremental, OffsetPaginator, PageRequest,
    QuotaReading, RateLimit, RetryPolicy, ValuesPartitioner, checked_base_url, seconds_to_reset,
)
from engine.core.protocol import Partition
from engine.core.spec import NAME_PATTERN, ConnectorSpec, SpecModel

PACIFIC = "America/Los_Angeles"
INTEGER_TYPES = {"TYPE_INTEGER"}
RULES = (
    ErrorRule(status=(429,), body_contains="per day", action="deferred", reset_every="day", reset_timezone=PACIFIC),
    ErrorRule(status=(429,), body_contains="concurrent requests", action="rate_limited", wait_s=30),
    ErrorRule(status=(429,), body_contains="per hour", action="rate_limited", reset_every="hour"),
    ErrorRule(status=(429,), body_contains="thresholded requests", action="rate_limited", reset_every="hour"),
    ErrorRule(status=(429,), body_contains="server errors", action="rate_limited", wait_s=3600),
    ErrorRule(status=(403,), action="fail",
              message="add the service account's e-mail (or the OAuth user) as a viewer of this GA4 property"),
    ErrorRule(status=(400,), action="fail",
              message="check the report's dimension and metric names (`GET .../metadata` lists them) and that "
                      "they are compatible"),
)


class Ga4Report(SpecModel):
    """One report, landed as one stream: `raw_<name>_<report>`."""

    name: str = Field(pattern=NAME_PATTERN)
    dimensions: tuple[str, ...] = Field(default=("date",), min_length=1, max_length=9)
    """GA4 API names (`date`, `country`, `sessionSource` ...); at most 9."""
    metrics: tuple[str, ...] = Field(min_length=1, max_length=10)
    """GA4 API names (`activeUsers`, `sessions` ...); at most 10."""


class Ga4Source(SpecModel):
    """Which properties and reports to read."""

    base_url: str = "https://analyticsdata.googleapis.com"
    property_ids: tuple[str, ...] = Field(min_length=1)
    """Numeric GA4 property ids (`properties/123456789` -> `"123456789"`)."""
    start_date: str
    """First day (YYYY-MM-DD) of a first sync."""
    lookback_days: int = Field(default=3, ge=0, le=30)
    """Days re-read on every run: GA4 finishes processing a day within 24-72 hours."""
    page_size: int = Field(default=100_000, ge=1, le=250_000)
    reports: tuple[Ga4Report, ...] = Field(min_length=1)
    rate_limit: RateLimit = RateLimit(requests_per_second=5.0, remaining_header=None, reset_header=None)
    retry: RetryPolicy = RetryPolicy()

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return checked_base_url(value)  # no credentials in it (use `auth:`)

    @field_validator("property_ids")
    @classmethod
    def _numeric(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [v for v in value if not v.isdigit()]
        if bad:
            raise ValueError(f"property ids are numbers (e.g. \"123456789\"); not: {', '.join(bad)}")
        return value


class Ga4Spec(ConnectorSpec):
    """A spec reading GA4 reports."""

    source_type: Literal["ga4"]
    source: Ga4Source


def streams(spec: Ga4Spec) -> list[HttpStream]:
    """Return one stream per configured report."""
    s = spec.source
    source = HttpSource(base_url=s.base_url, rate_limit=s.rate_limit, retry=s.retry, concurrency=1,
                        streams=tuple(_report(s, r) for r in s.reports))
    api = HttpApi.of("ga4", source, spec.auth, rules=RULES)
    return [HttpStream(api, x, shape=rows, prepare=date_range, quota=property_quota, quota_scope=property_scope)
            for x in source.streams]


def _report(s: Ga4Source, report: Ga4Report) -> HttpStreamSpec:
    return HttpStreamSpec(
        name=report.name, path="/v1beta/properties/{property_id}:runReport", method="POST",
        body={"dimensions": [{"name": d} for d in report.dimensions],
              "metrics": [{"name": m} for m in report.metrics],
              "keepEmptyRows": False, "returnPropertyQuota": True},
        primary_key=("property_id", *report.dimensions),
        paginator=OffsetPaginator(type="offset", limit=s.page_size, total_path=("rowCount",), in_body=True,
                                  as_string=True),
        partitions=ValuesPartitioner(type="values", field="property_id", values=s.property_ids),
        windows=DateWindows(start=s.start_date, step_days=1),
        incremental=Incremental(cursor_field="date", format="date", lookback_s=s.lookback_days * 86_400),
    )


def date_range(request: PageRequest, partition: Partition) -> PageRequest:
    """Put the partition's day into the report body (`dateRanges` is inclusive)."""
    first, last = partition.window
    return replace(request, body={**(request.body or {}), "dateRanges": [{"startDate": first, "endDate": last}]})


def rows(body: Any, partition: Partition) -> list[dict[str, Any]]:
    """Turn a report page into records: dimensions as text, metrics typed by their headers."""
    if not isinstance(body, dict):
        return []
    dims = [h["name"] for h in body.get("dimensionHeaders", [])]
    metrics = [(h["name"], h.get("type", "TYPE_FLOAT")) for h in body.get("metricHeaders", [])]
    property_id = dict(partition.where)["property_id"]
    out = []
    for row in body.get("rows", []):  # omitted when the report is empty
        record: dict[str, Any] = {"property_id": property_id}
        for name, cell in zip(dims, row.get("dimensionValues", []), strict=False):
            value = cell.get("value")
            record[name] = f"{value[:4]}-{value[4:6]}-{value[6:]}" if name == "date" and value else value
        for (name, kind), cell in zip(metrics, row.get("metricValues", []), strict=False):
            record[name] = _metric(cell.get("value"), kind)
        out.append(record)
    return out


def _metric(value: str | None, kind: str) -> int | float | None:
    if value is None or value == "":
        return None
    number = float(value)
    return round(number) if kind in INTEGER_TYPES else number


def property_scope(partition: Partition) -> str:
    """Name the quota a partition draws on: every GA4 property has its own pools (s.7)."""
    return f"property {dict(partition.where)['property_id']}"


def property_quota(body: Any) -> list[QuotaReading]:
    """Read `propertyQuota` (tokens left per hour and per day) for the credential's budget."""
    quota = body.get("propertyQuota") if isinstance(body, dict) else None
    if not isinstance(quota, dict):
        return []
    now = time.time()
    out = []
    for key, every, tz in (("tokensPerHour", "hour", "UTC"), ("tokensPerDay", "day", PACIFIC)):
        q = quota.get(key)
        if isinstance(q, dict) and "remaining" in q:
            remaining, consumed = int(q["remaining"]), int(q.get("consumed", 0))
            out.append(QuotaReading(key, remaining, now + seconds_to_reset(every, tz, now), remaining + consumed))
    return out
