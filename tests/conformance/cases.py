"""One conformance case per registered connector: its spec, how its source is started and changed, and what
the source holds (the truth bronze is compared with).

A case is declarations and a few small functions; tests/conformance/test_conformance.py runs the same checks
for every case. Adding a connector to `connectors.CONNECTORS` without a case here fails the suite.

Each case keeps its data small (hundreds to a few thousand rows) and its source as the connector's own tests
have it: the GitHub and GA4 emulators, the Odoo emulator over an Odoo-shaped schema, a real PostgreSQL table
for `database`, and the generated shop for `sample`. The canary is the connector's credential: the emulator
accepts only it, so every request of the suite carries it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from connectors.sample import SampleSpec
from connectors.specload import parse_spec
from engine.controlplane.db import Database
from tests.emulators.harness import EmulatorProcess
from tests.emulators.odoo import schema as odoo_schema
from tests.support import github
from tests.support.conformance import Versions, versions
from tests.support.databases import scratch_database
from tests.support.truth import source_rows
from tests.support.vault import Vault


@dataclass(frozen=True)
class Scratch:
    """Where a case's source is started: the scratch database (control plane and bronze) and its Vault."""

    database: Database
    vault: Vault


@dataclass
class Source:
    """A started source, as a case's functions see it."""

    database: Database
    """Where the source's tables are: the scratch database (the Odoo emulator's), or one beside it (`database`)."""
    emulator: EmulatorProcess | None = None
    clock: Any = None
    """The source's clock where the case keeps one: the sample shop's `today`, GA4's emulated date."""

    @property
    def api(self) -> EmulatorProcess:
        assert self.emulator is not None, "this case has no emulator"
        return self.emulator


@dataclass(frozen=True)
class StreamCheck:
    """A stream the checks compare with the source."""

    name: str
    key: tuple[str, ...]
    version: tuple[str, ...]
    """Columns that change when the source changes a record; compared with the truth for every key."""


@dataclass(frozen=True)
class Case:
    """How the conformance checks drive one connector."""

    source_type: str
    streams: tuple[StreamCheck, ...]
    start: Callable[[Scratch, str], AbstractContextManager[Source]]
    """Start the source for a module of checks, given the canary: store it as the connector's credential in
    the Vault and make the source accept only it."""
    spec: Callable[[Source, str], str]
    """The spec's YAML for an instance of this name (the name keeps each check's tables apart)."""
    truth: Callable[[Source, StreamCheck], Versions]
    """What the source holds now: {key: version} of every record of the stream."""
    change: Callable[[Source], None]
    """New and updated records at the source."""
    secret: str | None = None
    """The Vault secret holding the connector's credential (the canary in these checks)."""
    no_secret: str | None = None
    """Why the connector has no credential (then the canary check is skipped with this reason)."""
    no_incremental: str | None = None
    """Why the connector has no incremental mode (then the incremental check is skipped with this reason)."""

    def __post_init__(self) -> None:
        assert (self.secret is None) != (self.no_secret is None), \
            f"case {self.source_type}: name the credential's secret, or say why there is none"

    def stream(self, name: str) -> StreamCheck:
        return next(s for s in self.streams if s.name == name)


def _columns(source: Source, sql: str, check: StreamCheck) -> Versions:
    """{key: version} from a query on the scratch database returning the key, then the version columns."""
    with psycopg.connect(source.database.url) as conn:
        rows = conn.execute(sql).fetchall()  # type: ignore[arg-type]  # the cases' own constant SQL
    width = len(check.key)
    return {tuple(r[:width]): tuple(r[width:]) for r in rows}


# -- sample: the generated shop ---------------------------------------------------------------------------


def _sample_spec(source: Source, name: str) -> str:
    return (f"name: {name}\nsource_type: sample\nsync_mode: incremental\n"
            f"source: {{seed: 3, days: 30, today: {source.clock}, customers: 300, orders: 1500,"
            " partition_rows: 1000}\n"
            "streams: [{name: customers}, {name: orders}]\n")


@contextmanager
def _sample_start(scratch: Scratch, canary: str) -> Iterator[Source]:
    yield Source(scratch.database, clock=20)  # day 20 of 30: days 21 to 30 bring new and changed rows


def _sample_truth(source: Source, check: StreamCheck) -> Versions:
    spec = parse_spec(_sample_spec(source, "truth"))
    assert isinstance(spec, SampleSpec)
    return versions(source_rows(spec, check.name), check.key, check.version)


def _sample_change(source: Source) -> None:
    source.clock += 5


SAMPLE = Case(
    "sample",
    streams=(StreamCheck("customers", ("id",), ("updated_at", "tier")),
             StreamCheck("orders", ("id",), ("updated_at", "status"))),
    start=_sample_start, spec=_sample_spec, truth=_sample_truth, change=_sample_change,
    no_secret="the sample shop is generated inside the read task: no network, no credential",
)


# -- database: a real PostgreSQL table ----------------------------------------------------------------------


def _database_spec(source: Source, name: str) -> str:
    return (f"name: {name}\nsource_type: database\nsync_mode: incremental\n"
            "source:\n  url: {secret: source_url}\n  partition_rows: 1000\n"
            "  tables:\n    - {table: src.items, name: items, cursor: updated_at}\n")


@contextmanager
def _database_start(scratch: Scratch, canary: str) -> Iterator[Source]:
    # The table lives in a database beside the scratch one: a source may not read the control-plane database as
    # the platform. The canary is the password in the source's URL. The test server trusts local connections,
    # so it is sent and never checked; what matters is that it travels with the URL everywhere the URL goes.
    with scratch_database(scratch.database.url) as source_db:
        url = urlsplit(source_db.url)
        netloc = f"{url.username}:{canary}@{url.hostname}:{url.port or 5432}"
        scratch.vault.set("source_url", urlunsplit(url._replace(netloc=netloc)))
        with psycopg.connect(source_db.url, autocommit=True) as conn:
            conn.execute("create schema src")
            conn.execute("create table src.items (id bigint primary key, updated_at timestamptz not null, note text)")
            conn.execute("insert into src.items select g, timestamptz '2025-01-01 00:00:00+00'"
                         " + g * interval '1 minute', 'item ' || g from generate_series(1, 3000) g")
            conn.execute("create index on src.items (updated_at); analyze src.items")
        yield Source(source_db)


def _database_change(source: Source) -> None:
    with psycopg.connect(source.database.url, autocommit=True) as conn:
        conn.execute("update src.items set updated_at = now(), note = 'changed' where id % 75 = 0")  # 40 rows
        conn.execute("insert into src.items select g, now(), 'new' from generate_series(3001, 3020) g")


DATABASE = Case(
    "database",
    streams=(StreamCheck("items", ("id",), ("updated_at", "note")),),
    start=_database_start, spec=_database_spec,
    truth=lambda source, check: _columns(source, "select id, updated_at, note from src.items", check),
    change=_database_change, secret="source_url",
)


# -- github and http: the GitHub emulator -------------------------------------------------------------------

REPOS = ["acme/repo1", "acme/repo2"]
RATE = "  rate_limit: {requests_per_second: 200, burst: 20}\n"


@contextmanager
def _github_start(scratch: Scratch, canary: str, secret: str) -> Iterator[Source]:
    scratch.vault.set(secret, canary)
    with EmulatorProcess("github", "--token", canary, "--repos", "2", "--issues-per-repo", "150",
                         "--commits-per-repo", "5") as gh:
        yield Source(scratch.database, gh)


def _github_truth(source: Source, *, pulls: bool | None) -> Versions:
    """What GitHub lists now: `pulls` True for pull requests by (repo, number) (their ids differ from their
    issue ids), False for issues by id, None for both by id, as GitHub's issues endpoint lists them."""
    out: Versions = {}
    for repo in REPOS:
        t = github.truth(source.api, repo)
        for i, n, updated, pr in zip(t["ids"], t["numbers"], t["updated_at"], t["pull_request"]):
            if pulls is None or pr == pulls:
                out[(repo, n) if pulls else (i,)] = (updated,)
    return out


def _github_change(source: Source) -> None:
    source.api.admin("POST", "/_emulator/github/touch", json={"repo": "acme/repo1", "numbers": [3, 4, 5, 6, 7, 8]})
    source.api.admin("POST", "/_emulator/github/insert", json={"repo": "acme/repo2", "count": 4})


def _github_spec(source: Source, name: str) -> str:
    return (f"name: {name}\nsource_type: github\nauth: {{type: bearer, token: {{secret: github_token}}}}\n"
            f"source:\n  base_url: {source.api.url}\n  repos: [{', '.join(REPOS)}]\n  pages_per_partition: 1\n"
            f"  lookback_s: 0\n{RATE}streams: [{{name: issues}}, {{name: pull_requests}}]\n")


GITHUB = Case(
    "github",
    streams=(StreamCheck("issues", ("id",), ("updated_at",)),
             StreamCheck("pull_requests", ("repo", "number"), ("updated_at",))),
    start=lambda scratch, canary: _github_start(scratch, canary, "github_token"), spec=_github_spec,
    truth=lambda source, check: _github_truth(source, pulls=check.name == "pull_requests"),
    change=_github_change, secret="github_token",
)


def _http_spec(source: Source, name: str) -> str:
    return f"""name: {name}
source_type: http
auth: {{type: bearer, token: {{secret: api_token}}}}
source:
  base_url: {source.api.url}
{RATE}  streams:
    - name: issues
      path: /repos/{{repo}}/issues
      params: {{state: all, sort: updated, direction: asc}}
      primary_key: [id]
      partitions: {{type: values, field: repo, values: [{", ".join(REPOS)}]}}
      paginator: {{type: page_number, page_param: page, size_param: per_page, size: 100}}
      incremental: {{cursor_field: updated_at, param: since}}
"""


HTTP = Case(
    "http",
    streams=(StreamCheck("issues", ("id",), ("updated_at",)),),
    start=lambda scratch, canary: _github_start(scratch, canary, "api_token"), spec=_http_spec,
    truth=lambda source, check: _github_truth(source, pulls=None),
    change=_github_change, secret="api_token",
)


# -- ga4: the GA4 Data API emulator -------------------------------------------------------------------------

PROPERTIES = ("123456789", "987654321")
GA4_DAYS = 5
DIMENSIONS = ("date", "country", "deviceCategory")
METRICS = ("activeUsers", "sessions")


@contextmanager
def _ga4_start(scratch: Scratch, canary: str) -> Iterator[Source]:
    scratch.vault.set("ga4_token", canary)
    today = datetime.now(timezone.utc).date()  # the connector reads up to today by the machine's clock
    with EmulatorProcess("ga4", "--token", canary, "--properties", ",".join(PROPERTIES), "--days",
                         str(GA4_DAYS + 2), "--today", today.isoformat(), "--rows-per-day", "40") as ga:
        yield Source(scratch.database, ga, clock=today)


def _ga4_spec(source: Source, name: str) -> str:
    start = source.clock - timedelta(days=GA4_DAYS - 1)
    return f"""name: {name}
source_type: ga4
auth: {{type: bearer, token: {{secret: ga4_token}}}}
source:
  base_url: {source.api.url}
  property_ids: [{", ".join(f'"{p}"' for p in PROPERTIES)}]
  start_date: "{start.isoformat()}"
  lookback_days: 2
  page_size: 50
{RATE}  reports:
    - name: traffic
      dimensions: [{", ".join(DIMENSIONS)}]
      metrics: [{", ".join(METRICS)}]
"""


def _ga4_truth(source: Source, check: StreamCheck) -> Versions:
    """Every row GA4 reports now for the synced days, by (property, date, dimensions)."""
    out: Versions = {}
    for prop in PROPERTIES:
        for back in range(GA4_DAYS):
            day: date = source.clock - timedelta(days=back)
            report = source.api.admin("GET", "/_emulator/ga4/truth", params={
                "property": prop, "date": day.isoformat(), "dimensions": ",".join(DIMENSIONS),
                "metrics": ",".join(METRICS)})
            for row in report.get("rows", []):
                _, *dims = (c["value"] for c in row["dimensionValues"])
                out[(prop, day.isoformat(), *dims)] = tuple(int(c["value"]) for c in row["metricValues"])
    return out


GA4 = Case(
    "ga4",
    streams=(StreamCheck("traffic", ("property_id", *DIMENSIONS), METRICS),),
    start=_ga4_start, spec=_ga4_spec, truth=_ga4_truth,
    # GA4 keeps processing today and yesterday: their figures grow, and the lookback reads them again.
    change=lambda source: source.api.admin("POST", "/_emulator/ga4/advance", json={"generations": 1}),
    secret="ga4_token",
)


# -- odoo: the Odoo emulator's JSON-RPC over an Odoo-shaped schema ---------------------------------------------


@contextmanager
def _odoo_start(scratch: Scratch, canary: str) -> Iterator[Source]:
    scratch.vault.set("odoo_key", canary)
    with psycopg.connect(scratch.database.url) as conn:
        odoo_schema.create(conn, "public", partners=120, moves=20, orders=40, products=10, seed=5)
    with EmulatorProcess("odoo", "--database-url", scratch.database.url, "--db", "acme", "--login", "admin",
                         "--api-key", canary) as odoo:
        yield Source(scratch.database, odoo)


def _odoo_spec(source: Source, name: str) -> str:
    return (f"name: {name}\nsource_type: odoo\nsync_mode: incremental\nsource:\n  mode: jsonrpc\n"
            f"  base_url: {source.api.url}\n  database: acme\n  login: admin\n  api_key: {{secret: odoo_key}}\n"
            f"  page_size: 50\n  partition_rows: 60\n  lookback_s: 0\n{RATE}"
            "streams: [{name: res_partner}, {name: sale_order}]\n")


def _odoo_truth(source: Source, check: StreamCheck) -> Versions:
    # Odoo keeps write_date as naive UTC; bronze has it as UTC timestamps.
    return {k: (written.replace(tzinfo=timezone.utc),) for k, (written,) in _columns(
        source, f"select id, write_date from {check.name}", check).items()}


def _odoo_change(source: Source) -> None:
    source.api.admin("POST", "/_emulator/odoo/touch", json={"model": "res.partner", "ids": [10, 11, 12, 13]})
    source.api.admin("POST", "/_emulator/odoo/insert", json={"count": 3})
    source.api.admin("POST", "/_emulator/odoo/touch", json={"model": "sale.order", "ids": [1, 2]})


ODOO = Case(
    "odoo",
    streams=(StreamCheck("res_partner", ("id",), ("write_date",)),
             StreamCheck("sale_order", ("id",), ("write_date",))),
    start=_odoo_start, spec=_odoo_spec, truth=_odoo_truth, change=_odoo_change, secret="odoo_key",
)


CASES: dict[str, Case] = {c.source_type: c for c in (SAMPLE, DATABASE, HTTP, GA4, GITHUB, ODOO)}
"""The conformance case of every connector, by source type."""
