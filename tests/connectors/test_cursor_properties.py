"""RELIABILITY 12, property-tested: cursor edge cases cannot make a sync skip a record.

Records share cursor values across page boundaries, change between and during runs, and runs start
at arbitrary instants; times come naive or aware, with microseconds, across DST changes. Whatever the
split into runs, keyset paging from the stored cursor loads every current version of every record.
The API here is a small in-memory model of GitHub's `since` + `sort=updated` listing (a unit test of
the paginator and cursor arithmetic; the HTTP path is covered against the emulator).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.httpkit.components import CursorParamPaginator, HttpStreamSpec, Incremental
from connectors.httpkit.paginate import LoopGuard, Page, PageRequest, next_request
from connectors.httpkit.cursor import format_bound, minus, parse_time
from connectors.httpkit.gather import Ties

ORIGIN = datetime(2026, 3, 8, 6, 59, 0, tzinfo=timezone.utc)  # 01:59 in New York: DST starts a minute later
PER_PAGE = 5


class ModelApi:
    """Records (id -> updated_at, microsecond precision); serves `since` (second precision, inclusive)
    sorted by (updated_at, id), paged by `page` and `per_page`, as GitHub's issues endpoint does."""

    def __init__(self) -> None:
        self.records: dict[int, datetime] = {}

    def text(self, moment: datetime) -> str:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    def get(self, params: dict[str, object]) -> list[dict[str, object]]:
        since = str(params.get("since") or "")
        rows = sorted((t, i) for i, t in self.records.items() if self.text(t) >= since)
        page, size = int(params.get("page", 1)), int(params.get("per_page", PER_PAGE))  # type: ignore[call-overload]
        return [{"id": i, "updated_at": self.text(t)} for t, i in rows[(page - 1) * size: page * size]]


def read_from(api: ModelApi, lower: str | None, during: list[tuple[int, datetime]]) -> set[tuple[int, str]]:
    """Read every page from `lower` as HttpReader does (keyset, with ties re-read until settled); apply
    one pending change after each response (writes racing the read)."""
    paginator = CursorParamPaginator(type="cursor_param", param="since", field="updated_at", size=PER_PAGE)
    spec = HttpStreamSpec(name="issues", path="/issues", primary_key=("id",),
                          incremental=Incremental(cursor_field="updated_at", param="since", paginator=paginator))
    seen: set[tuple[int, str]] = set()

    def get(params: dict[str, object]) -> list[dict[str, object]]:
        records = api.get(params)
        seen.update((r["id"], r["updated_at"]) for r in records)  # type: ignore[misc]
        if during:
            i, moment = during.pop(0)
            api.records[i] = moment
        return records

    async def fetch(request: PageRequest) -> list[dict[str, object]]:  # what the reader does for `Ties`
        return get(request.params)

    async def follow() -> None:
        request: PageRequest | None = PageRequest("model", {"per_page": PER_PAGE, **({"since": lower} if lower else {})})
        guard, ties = LoopGuard(), Ties(spec, paginator)
        while request is not None:
            guard.check(request)
            records = get(request.params)
            page = Page(request, {}, records, records)
            nxt = next_request(paginator, page, cursor_value=records[-1]["updated_at"] if records else None)
            await ties.after_page(page, nxt, fetch)
            request = nxt

    asyncio.run(follow())
    return seen


# A run: (seconds since the previous event, records created, records updated before it, updated during it)
runs = st.lists(st.tuples(st.floats(0.0, 3.0), st.integers(0, 12), st.lists(st.integers(0, 40), max_size=8),
                          st.lists(st.integers(0, 40), max_size=4)), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None)
@given(runs=runs)
def test_any_split_into_runs_loads_every_current_version(runs):
    api, loaded, cursor, now, next_id = ModelApi(), set(), None, ORIGIN, 0
    for gap, created, updated, racing in runs:
        for _ in range(created):
            # Microseconds apart, so most share a second: the API's cursor values tie across pages.
            now += timedelta(microseconds=1)
            api.records[next_id] = now
            next_id += 1
        for i in updated:
            if i in api.records:
                now += timedelta(microseconds=137)
                api.records[i] = now
        now += timedelta(seconds=gap)
        started = now
        during = [(i, started + timedelta(milliseconds=10 * (k + 1))) for k, i in enumerate(racing) if i in api.records]
        lower = None if cursor is None else minus(cursor, 0, "iso8601")
        loaded |= read_from(api, lower, during)
        cursor = format_bound(started, "iso8601")  # the run's upper bound, fixed when it was planned
        now = max(now, *[m for _, m in during], started) + timedelta(milliseconds=50)
    loaded |= read_from(api, cursor, [])  # one more run after the source stopped changing
    current = {(i, api.text(t)) for i, t in api.records.items()}
    assert current <= loaded


zones = st.sampled_from([timezone.utc, ZoneInfo("America/New_York"), ZoneInfo("Europe/Berlin"), None])


@settings(max_examples=300, deadline=None)
@given(moment=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)), zone=zones,
       lookback=st.integers(0, 10 * 86_400))
def test_cursor_bounds_never_move_later_and_survive_a_round_trip(moment, zone, lookback):
    aware = moment.replace(tzinfo=zone) if zone is not None else moment.replace(tzinfo=timezone.utc)
    text = format_bound(aware, "iso8601")
    back = parse_time(text)
    assert back <= aware < back + timedelta(seconds=1)  # truncated to the second, never rounded up
    assert parse_time(minus(text, lookback, "iso8601")) == back - timedelta(seconds=lookback)
    assert format_bound(back, "iso8601") == text
    day = format_bound(aware, "date")
    assert minus(day, lookback, "date") <= day
