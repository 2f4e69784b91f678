"""The GA4 connector against the GA4 emulator over real HTTP, into real Postgres and Delta, on Ray.

One partition per property and day, offset paging, typed metrics, the lookback re-reading days GA4 is
still processing, and a spent daily token quota parking the run until the reset (RELIABILITY 9).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pyarrow as pa
import pytest
import ray

from engine.core.errors import RunDeferred
from tests.emulators.harness import EmulatorProcess
from tests.support.syncing import sync
from layers.addressing import Address
from tests.support.truth import assert_exactly_once_per_extraction, bronze_delta, bronze_postgres

pytestmark = pytest.mark.usefixtures("ray_cluster")

TOKEN = "ya29.canary-ga4-4d1f0b7e"
PROPERTIES = ["123456789", "987654321"]
DIMENSIONS = ["date", "country", "deviceCategory"]
METRICS = ["activeUsers", "sessions", "bounceRate"]
DAYS = 6
PACIFIC = ZoneInfo("America/Los_Angeles")


@pytest.fixture
def ga(monkeypatch: pytest.MonkeyPatch, vault) -> Iterator[EmulatorProcess]:
    monkeypatch.setenv("IPAI_DEV_MODE", "1")
    vault.set("ga4_token", TOKEN)
    monkeypatch.setenv("IPAI_CREDENTIAL_IDLE_S", "20")
    with EmulatorProcess("ga4", "--token", TOKEN, "--properties", ",".join(PROPERTIES), "--days", str(DAYS + 2),
                         "--today", today().isoformat(), "--rows-per-day", "400") as e:
        yield e


def today() -> date:
    return datetime.now(timezone.utc).date()


def spec_text(url: str, *, page_size: int = 100, extra: str = "") -> str:
    return f"""
name: web
source_type: ga4
auth: {{type: bearer, token: {{secret: ga4_token}}}}
source:
  base_url: {url}
  property_ids: [{", ".join(f'"{p}"' for p in PROPERTIES)}]
  start_date: "{(today() - timedelta(days=DAYS - 1)).isoformat()}"
  lookback_days: 2
  page_size: {page_size}
  rate_limit: {{requests_per_second: 200, burst: 20}}
{extra}
  reports:
    - name: traffic
      dimensions: [{", ".join(DIMENSIONS)}]
      metrics: [{", ".join(METRICS)}]
"""


WEB = Address("local", "dev", "web")
"""The instance every spec here is: stream `traffic` lands in `bronze_dev.raw_web_traffic`."""
TRAFFIC = f"{WEB.schema('bronze')}.{WEB.bronze_table('traffic')}"


def truth(ga: EmulatorProcess, days: list[date]) -> set[tuple[Any, ...]]:
    """Every (property, date, dimensions..., metrics...) row GA4 would report now for these days."""
    out = set()
    for prop in PROPERTIES:
        for day in days:
            report = ga.admin("GET", "/_emulator/ga4/truth", params={
                "property": prop, "date": day.isoformat(), "dimensions": ",".join(DIMENSIONS),
                "metrics": ",".join(METRICS)})
            types = [h["type"] for h in report["metricHeaders"]]
            for row in report.get("rows", []):
                dims = [c["value"] for c in row["dimensionValues"]]
                dims[0] = f"{dims[0][:4]}-{dims[0][4:6]}-{dims[0][6:]}"
                metrics = [int(c["value"]) if t == "TYPE_INTEGER" else float(c["value"])
                           for c, t in zip(row["metricValues"], types)]
                out.add((prop, *dims, *metrics))
    return out


def loaded(table: pa.Table, run_id: str | None = None) -> set[tuple[Any, ...]]:
    if run_id is not None:
        table = table.filter(pa.compute.equal(table.column("_ipai_run_id").cast(pa.string()), run_id))
    columns = ["property_id", *DIMENSIONS, *METRICS]
    return set(zip(*(table.column(c).to_pylist() for c in columns)))


def days_back(n: int) -> list[date]:
    return [today() - timedelta(days=i) for i in range(n)]


def test_one_partition_per_property_and_day_with_typed_metrics_then_lookback(ga, settings, database):
    first = sync(settings, database, spec_text(ga.url, page_size=10))
    assert first.status == "succeeded" and first.partitions == len(PROPERTIES) * DAYS
    pg = bronze_postgres(database.url, TRAFFIC)
    assert loaded(pg) == truth(ga, days_back(DAYS))
    assert pg.schema.field("activeUsers").type == pa.int64() and pg.schema.field("bounceRate").type == pa.float64()
    assert_exactly_once_per_extraction(pg, ("property_id", *DIMENSIONS))
    traffic = bronze_delta(WEB.delta_uri(settings.lakehouse_uri, "bronze", WEB.bronze_table("traffic")))
    assert loaded(traffic) == loaded(pg)
    reports = [e for e in ga.log() if e["path"].endswith(":runReport")]
    assert len(reports) > len(PROPERTIES) * DAYS, "days of tens of rows read in pages of 10 need several requests"

    # GA4 keeps processing the last days: their figures change, and the next run re-reads them.
    ga.admin("POST", "/_emulator/ga4/advance", json={"generations": 1})
    ga.clear_log()
    second = sync(settings, database, spec_text(ga.url))
    assert second.status == "succeeded" and second.partitions == len(PROPERTIES) * 3  # today and 2 days back
    recent = days_back(3)
    latest = loaded(bronze_postgres(database.url, TRAFFIC), second.run_id)
    assert latest == truth(ga, recent)
    asked = {e["body"]["dateRanges"][0]["startDate"] for e in ga.log() if e["path"].endswith(":runReport")}
    assert asked == {d.isoformat() for d in recent}


def test_spent_daily_quota_defers_the_run_and_the_next_run_resumes(ga, settings, database):
    # GA4 keeps a quota per property: tokens for half of each property's days (one request a day), so the
    # daily quota runs out mid-run. At most that many reads at once: a read the driver has not yet taken in
    # when the run is parked is read again next run, so a refusal must come after some read was taken in.
    tokens = DAYS // 2
    ga.set_faults(ga4_quota={"tokens_per_day": tokens, "cost_per_request": 1})
    text = spec_text(ga.url, page_size=1000) + f"tuning: {{max_in_flight: {tokens}}}\n"
    with pytest.raises(RunDeferred, match="tokensPerDay|per day") as deferred:
        sync(settings, database, text)
    with psycopg.connect(database.url) as conn:
        status, until = conn.execute("select status, deferred_until from connector_runs").fetchone()
        kept = conn.execute("select count(*) from connector_state where kind = 'partition'").fetchone()[0]
    assert status == "deferred" and 0 < kept < len(PROPERTIES) * DAYS
    # Parked because a property's quota really is spent, not while every property still had tokens left.
    quota = ga.admin("GET", "/_emulator/ga4/state")["quota"]
    assert max(pools["tokensPerDay"]["used"] for pools in quota.values()) == tokens
    # Parked until GA4's daily reset: midnight Pacific time.
    midnight = datetime.combine(datetime.now(PACIFIC).date() + timedelta(days=1), datetime.min.time(), PACIFIC)
    assert abs(until.timestamp() - midnight.timestamp()) < 5 and abs(deferred.value.until - midnight.timestamp()) < 5
    # A new day: GA4 grants a new quota, and the credential's budget (an actor that idles out long before
    # midnight) no longer remembers the spent one.
    ga.set_faults(ga4_quota={})
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith("credential-"):
            ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]))
    resumed = sync(settings, database, text)
    assert resumed.status == "succeeded"
    pg = bronze_postgres(database.url, TRAFFIC)
    assert loaded(pg) == truth(ga, days_back(DAYS))
    assert_exactly_once_per_extraction(pg, ("property_id", *DIMENSIONS))
