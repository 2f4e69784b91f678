"""Cursor values at run time: lower and upper bounds in the format an API takes, lookback, date windows.

Bounds are formatted from UTC and truncated to the second (never rounded up), so a bound sent inclusively
(`since`) can only re-read, never skip; lookback arithmetic is exact in every format.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any

from connectors.httpkit.components import HttpStreamSpec


def parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def format_bound(moment: datetime, fmt: str) -> Any:
    moment = moment.astimezone(timezone.utc)
    if fmt == "iso8601":
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if fmt == "date":
        return moment.date().isoformat()
    if fmt == "epoch_seconds":
        return int(moment.timestamp())
    return int(moment.timestamp() * 1000)


def minus(cursor: Any, seconds: int, fmt: str) -> Any:
    if not seconds:
        return cursor
    if fmt == "iso8601":
        return format_bound(parse_time(str(cursor)) - timedelta(seconds=seconds), fmt)
    if fmt == "date":
        return (date.fromisoformat(str(cursor)) - timedelta(seconds=seconds)).isoformat()
    return int(cursor) - seconds * (1000 if fmt == "epoch_millis" else 1)


def windows(spec: HttpStreamSpec, lower: Any, upper: Any) -> list[tuple[str, str]]:
    """Split [lower, upper] into date windows of `step_days` (inclusive dates, as report APIs take them)."""
    assert spec.windows is not None
    first = date.fromisoformat(str(lower)[:10]) if lower is not None else date.fromisoformat(spec.windows.start)
    last = date.fromisoformat(str(upper)[:10])
    out = []
    day = first
    while day <= last:
        end = min(last, day + timedelta(days=spec.windows.step_days - 1))
        out.append((day.isoformat(), end.isoformat()))
        day = end + timedelta(days=1)
    return out
