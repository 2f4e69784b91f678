"""A small sample shop (1 customers and 5 orders partitions) and what a user checks once it synced."""

from __future__ import annotations

from connectors.sample import SampleSpec
from connectors.specload import parse_spec
from engine.controlplane import records, state
from engine.controlplane.db import Database
from engine.controlplane.settings import Settings
from tests.support.truth import assert_bronze_equals_source, assert_state_not_ahead_of_data, day_cursor

DAYS = 30
SPEC = """
name: {name}
source_type: sample
sync_mode: incremental
source:
  seed: 5
  days: {days}
  customers: 3000
  orders: 20000
  partition_rows: 4000
  read_delay_ms: {read_delay_ms}
streams:
{streams}
tuning:
  max_in_flight: {max_in_flight}
  commit_rows: {commit_rows}
"""


def sample_spec(
    name: str, *, read_delay_ms: int = 0, streams: tuple[str, ...] = ("customers", "orders"),
    max_in_flight: int = 4, commit_rows: int = 100_000,
) -> tuple[SampleSpec, str]:
    """Return (spec, yaml text) for a small sample shop (1 customers and 5 orders partitions); `name`
    keeps each test's tables apart."""
    text = SPEC.format(name=name, days=DAYS, read_delay_ms=read_delay_ms, max_in_flight=max_in_flight,
                       commit_rows=commit_rows,
                       streams="\n".join(f"  - name: {s}" for s in streams))
    spec = parse_spec(text)
    assert isinstance(spec, SampleSpec)
    return spec, text


def assert_synced(spec: SampleSpec, settings: Settings, database: Database) -> None:
    """What a user checks after the sync finally succeeded: bronze equals the source, once, in Postgres and
    Delta; every planned partition recorded and backed by data; every extraction done; cursors at the
    source's clock."""
    streams = [s.name for s in spec.streams]
    for stream in streams:
        assert_bronze_equals_source(spec, stream, db_url=database.url, lakehouse_uri=settings.lakehouse_uri)
    checked = assert_state_not_ahead_of_data(database.url, settings.lakehouse_uri, spec)
    with database.connect() as conn:
        extractions = conn.execute(
            "select coalesce(sum(jsonb_array_length(partitions)), 0), count(*) filter (where status <> 'done')"
            " from connector_extractions").fetchone()
        instance_id = records.find_instance(conn, spec.name)["id"]
        cursors = {s: state.get_cursor(conn, instance_id, s) for s in streams}
    assert extractions == (checked, 0), "(partitions planned, extractions unfinished) vs partitions recorded"
    assert cursors == {s: day_cursor(DAYS) for s in streams}
