"""Cron schedules evaluated in the database agree with croniter, and bad ones are refused with a reason.

A property test draws 5-field expressions (numbers, names, ranges, steps, lists, `*`, macros) and UTC
start times: `ipai.cron_next` must be croniter's next fire time, `ipai.cron_prev` croniter's latest fire
time at or before the start, a fire time must be its own `cron_prev`, and no fire time falls strictly
between `cron_prev(e, t)` and t. Two forms are left out on purpose: an equal range `a-a` (croniter reads
it as the whole cycle, its wrap-around convention; the database, which refuses ranges that wrap, reads
`a`) and a `*` inside a list.

Then the reasons `ipai.cron_error` gives, and the schedule trigger on connector_instances: an invalid
schedule is refused with its reason, and setting or changing one makes it count from now.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from croniter import CroniterBadDateError, croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.controlplane.db import Database

MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
WEEKDAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
FIELDS = (  # (lowest, highest, names from the lowest value on)
    (0, 59, None), (0, 23, None), (1, 31, None), (1, 12, MONTHS), (0, 7, WEEKDAYS),
)
MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
LOOKS_AHEAD = timedelta(days=5 * 365)  # cron_next gives up after five years


@pytest.fixture(scope="module")
def conn(migrated_database: Database) -> Any:
    with migrated_database.connect() as c:
        yield c


@st.composite
def value(draw: st.DrawFn, lo: int, hi: int, names: tuple[str, ...] | None, *, below: int | None = None,
          above: int | None = None) -> tuple[int, str]:
    v = draw(st.integers(lo if above is None else above + 1, hi if below is None else below - 1))
    if names and v - lo < len(names) and draw(st.booleans()):  # 7 has no name: SUN is 0
        name = names[v - lo]
        return v, draw(st.sampled_from((name, name.lower(), name.capitalize())))
    return v, str(v)


@st.composite
def item(draw: st.DrawFn, lo: int, hi: int, names: tuple[str, ...] | None) -> str:
    step = draw(st.integers(1, hi - lo + 1))
    form = draw(st.sampled_from(("value", "range", "every", "range/step", "start/step")))
    if form == "every":
        return f"*/{step}"
    if form in ("value", "start/step"):
        _, text = draw(value(lo, hi, names))
        return text if form == "value" else f"{text}/{step}"
    a, a_text = draw(value(lo, hi, names, below=hi))
    _, b_text = draw(value(lo, hi, names, above=a))
    return f"{a_text}-{b_text}" + ("" if form == "range" else f"/{step}")


def field(lo: int, hi: int, names: tuple[str, ...] | None) -> st.SearchStrategy[str]:
    return st.one_of(st.just("*"), st.lists(item(lo, hi, names), min_size=1, max_size=3).map(",".join))


@st.composite
def expressions(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 19)) == 0:
        return draw(st.sampled_from(MACROS))
    fields = [draw(field(*f)) for f in FIELDS]
    return draw(st.sampled_from((" ", "  ", "\t"))).join(fields)


start_times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 12, 31),
                           timezones=st.just(timezone.utc))


def croniter_next(expr: str, t: datetime) -> datetime | None:
    try:
        return croniter(expr, t).get_next(datetime)
    except CroniterBadDateError:
        return None


def croniter_at_or_before(expr: str, t: datetime) -> datetime | None:
    try:
        return croniter(expr, t.replace(second=0, microsecond=0) + timedelta(minutes=1)).get_prev(datetime)
    except CroniterBadDateError:
        return None


@settings(max_examples=150, deadline=None)
@given(expr=expressions(), t=start_times)
def test_fire_times_agree_with_croniter(conn: psycopg.Connection[Any], expr: str, t: datetime) -> None:
    nxt, prev_of_next, prev, next_of_prev = conn.execute(
        "select n, ipai.cron_prev(%(e)s, n), p, ipai.cron_next(%(e)s, p)"
        "  from (select ipai.cron_next(%(e)s, %(t)s) as n, ipai.cron_prev(%(e)s, %(t)s) as p) x",
        {"e": expr, "t": t}).fetchone()
    expected = croniter_next(expr, t)
    if nxt is None:  # no date matches within five years (31 April, say)
        assert expected is None or expected > t + LOOKS_AHEAD
        return
    assert nxt == expected
    assert prev_of_next == nxt, "a fire time is its own latest fire time"
    assert prev == croniter_at_or_before(expr, t)
    assert prev <= t < next_of_prev, "no fire time strictly between cron_prev(e, t) and t"


@pytest.mark.parametrize(("expr", "after", "expected"), [
    ("2 4 1 * wed", "2010-01-25 00:00", "2010-01-27 04:02"),       # croniter's README: Wednesdays or the 1st
    ("2 4 1 * wed", "2010-01-27 04:02", "2010-02-01 04:02"),
    ("0 0 1-31 * 1", "2024-07-12 10:00", "2024-07-13 00:00"),      # both restricted: every day matches
    ("0 0 1 * 0-6", "2024-07-12 10:00", "2024-07-13 00:00"),
    ("0 0 1-31 * */2", "2024-07-14 10:00", "2024-07-16 00:00"),    # 1-31 beside a `*` field counts as `*`
    ("0 0 * * 6/1", "2024-07-13 10:00", "2024-07-20 00:00"),       # day-of-week `a/n` ends on Saturday
    ("0 0 * * 7", "2024-07-12 10:00", "2024-07-14 00:00"),         # 7 is Sunday
    ("0 0 29 2 *", "2097-01-01 00:00", None),                      # 2104-02-29 is more than five years off
    ("*/15 9-17 * * mon-fri", "2024-07-12 17:50", "2024-07-15 09:00"),
])
def test_documented_examples(conn: psycopg.Connection[Any], expr: str, after: str, expected: str | None) -> None:
    got = conn.execute("select ipai.cron_next(%s, %s::timestamp at time zone 'UTC')", (expr, after)).fetchone()[0]
    assert got == (None if expected is None else datetime.fromisoformat(expected).replace(tzinfo=timezone.utc))


@pytest.mark.parametrize(("expr", "reason"), [
    ("61 * * * *", "minute field: 61 is out of range 0-59"),
    ("* * * *", "needs 5 fields (minute hour day-of-month month day-of-week), got 4"),
    ("0 0 L * *", "day-of-month field: 'l' uses L, W, # or ?, which are not supported"),
    ("5-1 * * * *", "minute field: range '5-1' runs backwards"),
    ("0 0 30 2 *", "never fires: no date matches it (such as 30 February)"),
    ("@fortnightly", "unknown macro '@fortnightly'; known: @yearly @annually @monthly @weekly @daily @midnight @hourly"),
])
def test_cron_error_gives_the_reason(conn: psycopg.Connection[Any], expr: str, reason: str) -> None:
    assert conn.execute("select ipai.cron_error(%s)", (expr,)).fetchone() == (reason,)


@pytest.mark.parametrize("expr", ["0 6 * * *", "*/5 * * * mon-fri", "@daily", "0 0 29 2 *"])
def test_cron_error_is_null_for_a_valid_schedule(conn: psycopg.Connection[Any], expr: str) -> None:
    assert conn.execute("select ipai.cron_error(%s)", (expr,)).fetchone() == (None,)


@pytest.fixture
def instance(conn: psycopg.Connection[Any]) -> Any:
    """An unscheduled instance, inside a transaction rolled back after the test (so now() stands still)."""
    with conn.transaction(force_rollback=True):
        definition = conn.execute(
            "insert into connector_definitions (name, type, yaml_spec, spec_sha256, version)"
            " values ('orders', 'sample', 'x', 'x', 1) returning id").fetchone()[0]
        yield conn.execute("insert into connector_instances (definition_id, name) values (%s, 'orders') returning id",
                           (definition,)).fetchone()[0]


def test_an_invalid_schedule_is_refused_on_insert_with_its_reason(conn: psycopg.Connection[Any], instance: Any) -> None:
    definition = conn.execute("select definition_id from connector_instances where id = %s", (instance,)).fetchone()[0]
    with pytest.raises(psycopg.errors.InvalidParameterValue,
                       match=r"invalid schedule '61 \* \* \* \*': minute field: 61 is out of range 0-59"):
        with conn.transaction():
            conn.execute("insert into connector_instances (definition_id, name, env, schedule)"
                         " values (%s, 'orders', 'prod', '61 * * * *')", (definition,))


def test_an_invalid_schedule_is_refused_on_update_with_its_reason(conn: psycopg.Connection[Any], instance: Any) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue,
                       match=r"invalid schedule '0 0 30 2 \*': never fires: no date matches it"):
        with conn.transaction():
            conn.execute("update connector_instances set schedule = '0 0 30 2 *' where id = %s", (instance,))
    assert conn.execute("select schedule from connector_instances where id = %s", (instance,)).fetchone() == (None,)


def last_scheduled_for(conn: psycopg.Connection[Any], instance: Any) -> datetime:
    return conn.execute("select last_scheduled_for from connector_instances where id = %s", (instance,)).fetchone()[0]


def backdate(conn: psycopg.Connection[Any], instance: Any) -> None:
    conn.execute("update connector_instances set last_scheduled_for = '2020-01-01Z' where id = %s", (instance,))


def test_setting_or_changing_a_schedule_counts_from_now(conn: psycopg.Connection[Any], instance: Any) -> None:
    now = conn.execute("select now()").fetchone()[0]
    for schedule in ("0 6 * * *", "0 7 * * *", None):
        backdate(conn, instance)
        conn.execute("update connector_instances set schedule = %s where id = %s", (schedule, instance))
        assert last_scheduled_for(conn, instance) == now, f"after setting {schedule!r}"


def test_an_unchanged_schedule_keeps_its_place(conn: psycopg.Connection[Any], instance: Any) -> None:
    conn.execute("update connector_instances set schedule = '0 6 * * *' where id = %s", (instance,))
    backdate(conn, instance)
    conn.execute("update connector_instances set schedule = schedule, env = env where id = %s", (instance,))
    assert last_scheduled_for(conn, instance) == datetime(2020, 1, 1, tzinfo=timezone.utc)


def test_reactivating_an_instance_counts_from_now(conn: psycopg.Connection[Any], instance: Any) -> None:
    now = conn.execute("select now()").fetchone()[0]
    conn.execute("update connector_instances set schedule = '0 6 * * *', status = 'paused' where id = %s", (instance,))
    backdate(conn, instance)
    conn.execute("update connector_instances set status = 'active' where id = %s", (instance,))
    assert last_scheduled_for(conn, instance) == now
