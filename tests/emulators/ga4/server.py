"""GA4 Data API emulator, per ../shared/api-contracts/ga4.md (sections 1-10 and its emulator checklist).

    python -m tests.emulators.ga4 --port 0 --token T [--properties 123456789,987654321] [--seed 0]
        [--start-date 2024-01-01] [--days N] [--today YYYY-MM-DD] [--rows-per-day 200]
        [--processing-interval-s S] [OAuth options from base.py]

Data: each property has about `--rows-per-day` fact rows a day (ga4_data.py) from `--start-date` (default
2024-01-01) up to the emulated today (`--today`, default the UTC date at start). `--days N` ends the data N
days after `--start-date`, or without `--start-date` makes it the last N days up to today. Today and
yesterday are still being processed: their metrics grow with the processing generation (section 9).

API routes (`Authorization: Bearer <token>`; errors are {"error": {"code", "message", "status"}}, section 8):
    POST /v1beta/properties/{id}:runReport   RunReportRequest -> RunReportResponse (sections 3-5, and
                                             ga4_request.py for what is validated); rows are sorted by their
                                             dimension values, so offset paging is stable
    GET  /v1beta/properties/{id}/metadata    the dimensions and metrics served (id 0: the same, for anyone)
An unknown property answers 403 PERMISSION_DENIED; another `:method` answers 404. Quotas: ga4_quota.py.
The base pipeline's GitHub-style x-ratelimit-* headers are removed: Google sends none.

Admin routes beyond base.py's:
    POST /_emulator/ga4/advance {"generations": n, "days": d}  processing generation += n (default 1) and
                                                               today += d days (default 0); returns the state
    GET  /_emulator/ga4/state     {"today", "generation", "quota": {property: {pool: {limit, used, reset_in_s}}}}
    GET  /_emulator/ga4/truth?property=P&date=D&dimensions=a,b&metrics=x,y[&keepEmptyRows=true]
         the whole current report of one day (every row, no quota, no faults) plus "today" and "generation"
Faults beyond base.py's: `ga4_quota` (ga4_quota.py). `GET /_emulator/stats` adds `quota_refusals`: requests
refused with 429 RESOURCE_EXHAUSTED by a property quota, logged with note "quota-exhausted".
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.emulators.base import Emulator, Reply, json_reply, oauth_config, run
from tests.emulators.ga4.data import Clock, Dataset, Query
from tests.emulators.ga4.quota import MESSAGES, PropertyQuotas, parse_quota
from tests.emulators.ga4.render import response_json
from tests.emulators.ga4.request import Invalid, ReportRequest, google_error, parse_report_request
from tests.emulators.ga4.schema import metadata
from tests.emulators.requestlog import credential_id

PROPERTY_PATH = re.compile(r"/v1beta/properties/([^/:]+)")
DENIED = "User does not have sufficient permissions for this property."
_SETTINGS = (("America/Los_Angeles", "USD"), ("Europe/Berlin", "EUR"), ("Europe/London", "GBP"))
_RATE_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-used", "x-ratelimit-reset",
                 "x-ratelimit-resource")
_AUTH_HELP = ("Expected OAuth 2 access token, login cookie or other valid authentication credential. See "
              "https://developers.google.com/identity/sign-in/web/devconsole-project.")
_SERVER_ERRORS = {500: "Internal error encountered.", 503: "The service is currently unavailable.",
                  504: "The request deadline was exceeded."}


def _message(status: int, kind: str) -> str:
    """Google's wording for the answers the base pipeline gives on its own."""
    if kind == "no-auth":
        return "Request is missing required authentication credential. " + _AUTH_HELP
    if kind == "bad-credentials":
        return "Request had invalid authentication credentials. " + _AUTH_HELP
    if status == 403:
        return "The caller does not have permission"
    if kind == "storm":  # GA4 has no secondary rate limit; its nearest kin is the concurrency quota
        return MESSAGES["concurrentRequests"]
    if kind == "primary":
        return MESSAGES["tokensPerProjectPerHour"]
    if kind == "not-found":
        return "Requested entity was not found."
    return _SERVER_ERRORS.get(status, "Internal error encountered.")


class Ga4Emulator(Emulator):
    """The base pipeline with Google's error bodies and per-property quota bookkeeping around each request."""

    def __init__(self, *, properties: frozenset[str], **kwargs: Any) -> None:
        super().__init__(extra_faults={"ga4_quota": parse_quota}, **kwargs)
        self.properties = properties
        self.quotas = PropertyQuotas()

    def error(self, status: int, kind: str, *, note: str | None = None) -> Reply:
        reply = json_reply(google_error(status, _message(status, kind)), status, note=note or kind)
        if status == 401:
            invalid = ', error="invalid_token"' if kind == "bad-credentials" else ""
            reply.headers["WWW-Authenticate"] = f'Bearer realm="https://accounts.google.com/"{invalid}'
        return reply

    def application(self) -> web.Application:
        app = super().application()

        @web.middleware
        async def per_property(request: web.Request,
                               handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
            # Wraps the whole pipeline (latency faults included) so in-flight counts and 5xx answers are
            # seen per property, as the concurrentRequests and serverErrors pools need.
            request["ga4_arrival"] = time.time()
            match = PROPERTY_PATH.match(request.path)
            prop = match.group(1) if match and match.group(1) in self.properties else None
            if prop is None:
                response = await handler(request)
            else:
                self.quotas.configure(self.faults.get("ga4_quota"))
                request["ga4_in_flight"] = self.quotas.enter(prop)
                try:
                    response = await handler(request)
                finally:
                    self.quotas.leave(prop)
                if response.status >= 500:
                    self.quotas.server_error(prop, time.time())
            for header in _RATE_HEADERS:
                response.headers.popall(header, None)
            return response
        app.middlewares.append(per_property)
        return app

    async def _stats(self, request: web.Request) -> Any:
        stats = await super()._stats(request)
        stats["quota_refusals"] = stats["by_note"].get("quota-exhausted", 0)
        return stats


@dataclass(frozen=True)
class Property:
    id: str
    index: int
    time_zone: str
    currency: str


def _token(request: web.Request) -> str | None:
    return request.headers.get("Authorization", "").partition(" ")[2].strip() or None


class Ga4:
    """The GA4 routes over one dataset, with the emulated date and processing generation they share."""

    def __init__(self, emulator: Ga4Emulator, dataset: Dataset, properties: list[Property], *, today: int,
                 processing_interval_s: float) -> None:
        self.emulator = emulator
        self.dataset = dataset
        self.properties = {p.id: p for p in properties}
        self._today = today
        self._generation = 0
        self._interval = processing_interval_s
        self._started = time.monotonic()

    def install(self) -> None:
        em = self.emulator
        em.api_route("POST", "/v1beta/properties/{call}", self.call)
        em.api_route("GET", "/v1beta/properties/{id}/metadata", self.metadata)
        em.admin_route("POST", "/_emulator/ga4/advance", self.advance)
        em.admin_route("GET", "/_emulator/ga4/state", self.state)
        em.admin_route("GET", "/_emulator/ga4/truth", self.truth)

    def clock(self) -> Clock:
        ticks = int((time.monotonic() - self._started) / self._interval) if self._interval else 0
        return Clock(self._today, self._generation + ticks)

    # -- API routes --------------------------------------------------------------------------------------

    async def call(self, request: web.Request) -> Reply:
        """`{id}:runReport`; aiohttp cannot put a variable before a literal colon, so the method is split here."""
        prop_id, _, method = request.match_info["call"].partition(":")
        if method != "runReport":
            return self.emulator.error(404, "not-found")
        prop = self.properties.get(prop_id)
        if prop is None:
            return json_reply(google_error(403, DENIED), 403, note="permission-denied")
        clock = self.clock()
        try:
            try:
                body = json.loads(await request.read())
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise Invalid("Invalid JSON payload received. Unexpected token in the request body.") from None
            ask = parse_report_request(body, property_id=prop.id, today=clock.today)
        except Invalid as exc:
            return json_reply(google_error(400, str(exc)), 400, note="invalid-argument")
        refused = self._refused(request, prop, thresholded=ask.thresholded)
        if refused is not None:
            return refused
        report = self.dataset.report(self._query(prop, ask), clock)
        returned = max(0, min(report.rows, ask.offset + ask.limit) - ask.offset)
        quotas = self.emulator.quotas
        quota = quotas.charge(prop.id, cost=quotas.cost(returned), thresholded=ask.thresholded, now=time.time())
        text = response_json(report, self.dataset.world, dimensions=ask.dimensions, metrics=ask.metrics,
                             range_names=ask.range_names, offset=ask.offset, limit=ask.limit,
                             metadata=self._metadata(prop, ask), quota=quota if ask.return_quota else None)
        return Reply(200, text.encode(), note="ignored:" + ",".join(ask.ignored) if ask.ignored else None)

    async def metadata(self, request: web.Request) -> Reply:
        prop_id = request.match_info["id"]
        if prop_id != "0":  # properties/0/metadata: the dimensions and metrics common to every property
            prop = self.properties.get(prop_id)
            if prop is None:
                return json_reply(google_error(403, DENIED), 403, note="permission-denied")
            refused = self._refused(request, prop, thresholded=False)
            if refused is not None:
                return refused
        return json_reply(metadata(prop_id))

    def _query(self, prop: Property, ask: ReportRequest) -> Query:
        return Query(prop.index, ask.ranges, ask.dimensions, ask.metrics, ask.keep_empty)

    def _metadata(self, prop: Property, ask: ReportRequest) -> dict[str, Any]:
        meta: dict[str, Any] = {"currencyCode": prop.currency, "timeZone": prop.time_zone}
        if ask.thresholded:
            meta["subjectToThresholding"] = True
        return meta

    def _refused(self, request: web.Request, prop: Property, *, thresholded: bool) -> Reply | None:
        now = time.time()
        refusal = self.emulator.quotas.refusal(prop.id, credential_id(_token(request)),
                                               arrival=request.get("ga4_arrival", now),
                                               in_flight=request.get("ga4_in_flight", 1), now=now,
                                               grace_s=self.emulator.faults.grace_s(), thresholded=thresholded)
        if refusal is None:
            return None
        reply = json_reply(google_error(429, refusal.message), 429, note="quota-exhausted")
        reply.violation = refusal.violation
        return reply

    # -- admin routes ------------------------------------------------------------------------------------

    async def advance(self, request: web.Request) -> Any:
        try:
            body = await request.json() if request.can_read_body else {}
        except json.JSONDecodeError:
            raise ValueError("the advance body must be JSON") from None
        if not isinstance(body, dict) or set(body) - {"generations", "days"}:
            raise ValueError('advance takes {"generations": n, "days": d}')
        steps = {key: body.get(key, default) for key, default in (("generations", 1), ("days", 0))}
        for key, value in steps.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key} must be an integer >= 0, got {value!r}")
        self._generation += steps["generations"]
        self._today += steps["days"]
        return await self.state(request)

    async def state(self, request: web.Request) -> Any:
        clock = self.clock()
        return {"today": dt.date.fromordinal(clock.today).isoformat(), "generation": clock.generation,
                "quota": self.emulator.quotas.snapshot(list(self.properties), time.time())}

    async def truth(self, request: web.Request) -> Any:
        """One day's whole report as runReport would answer it now, plus "today" and "generation"."""
        q = request.query
        prop = self.properties.get(q.get("property", ""))
        if prop is None:
            raise ValueError(f"property must be one of {sorted(self.properties)}")
        clock = self.clock()
        body = {"dateRanges": [{"startDate": q.get("date"), "endDate": q.get("date")}],
                "dimensions": [{"name": n} for n in q.get("dimensions", "date").split(",") if n],
                "metrics": [{"name": n} for n in q.get("metrics", "activeUsers,sessions").split(",") if n],
                "keepEmptyRows": q.get("keepEmptyRows", "false") == "true"}
        try:
            ask = parse_report_request(body, property_id=prop.id, today=clock.today)
        except Invalid as exc:
            raise ValueError(str(exc)) from None
        report = self.dataset.report(self._query(prop, ask), clock)
        text = response_json(report, self.dataset.world, dimensions=ask.dimensions, metrics=ask.metrics,
                             range_names=ask.range_names, offset=0, limit=report.rows,
                             metadata=self._metadata(prop, ask), quota=None)
        return {**json.loads(text), "today": dt.date.fromordinal(clock.today).isoformat(),
                "generation": clock.generation}


# -- the process ----------------------------------------------------------------------------------------

def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a YYYY-MM-DD date") from None


def _property_ids(value: str) -> list[str]:
    ids = [p.strip() for p in value.split(",") if p.strip()]
    if not ids or not all(p.isdigit() and p != "0" for p in ids) or len(set(ids)) != len(ids):
        raise argparse.ArgumentTypeError("--properties is a comma-separated list of distinct numeric ids (not 0)")
    return ids


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--properties", type=_property_ids, default="123456789,987654321")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start-date", type=_date, help="first day with data (default 2024-01-01)")
    parser.add_argument("--days", type=int, help="days with data: from --start-date, or the last N up to today")
    parser.add_argument("--today", type=_date, help="the emulated current date (default: today in UTC)")
    parser.add_argument("--rows-per-day", type=int, default=200, help="fact rows per property-day (+-10 %%)")
    parser.add_argument("--processing-interval-s", type=float, default=0.0,
                        help="also advance the processing generation every S seconds (0: only by admin call)")


def _install(args: argparse.Namespace, base_url: str) -> Emulator:
    today = (args.today or dt.datetime.now(dt.timezone.utc).date()).toordinal()
    if args.days is not None and args.days < 1:
        raise SystemExit("--days must be >= 1")
    if args.start_date is None and args.days is not None:
        first, last = today - args.days + 1, None
    else:
        first = (args.start_date or dt.date(2024, 1, 1)).toordinal()
        last = None if args.days is None else first + args.days - 1
    properties = [Property(pid, i, *_SETTINGS[i % len(_SETTINGS)]) for i, pid in enumerate(args.properties)]
    emulator = Ga4Emulator(properties=frozenset(args.properties), base_url=base_url,
                           oauth=oauth_config(args, base_url), static_tokens=args.token, log_limit=args.log_limit)
    dataset = Dataset(seed=args.seed, rows_per_day=args.rows_per_day, first_day=first, last_day=last)
    Ga4(emulator, dataset, properties, today=today, processing_interval_s=args.processing_interval_s).install()
    return emulator


def serve() -> None:
    """`python -m tests.emulators.ga4`: run the emulator with the command line's options."""
    run("ga4", add_arguments=_arguments, install=_install)
