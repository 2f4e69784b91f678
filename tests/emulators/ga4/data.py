"""Deterministic GA4 report data: fact rows per property-day, grouped on demand into report rows.

A property-day holds about `rows_per_day` (+-10 %) fact rows at the finest grain. Each fact row carries a
value for every dimension (a place, a device, a traffic source, a page, ...) and additive measures
(sessions, users, revenue, ...). Nothing is stored: every column is drawn by integer hashing of (seed,
property, day, row, column), so a day of 100,000 rows costs a few milliseconds of numpy and is the same in
every process started with the same seed.

A report groups the facts of its date range by the requested dimensions and sums the measures; ratio metrics
are computed from the sums, so reports over the same days agree (the sessions of every country add up to the
sessions of the day). Values are coded so that code order is string order: report rows come out sorted by
their dimension values (as strings, in the requested order), which keeps offset paging stable.

Freshness (../shared/api-contracts/ga4.md section 9): the measures of today and yesterday are scaled down by
a completeness that grows with the processing generation (late hits arriving); from two days old on, a day is
final and never changes again.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tests.emulators.ga4.schema import (AGE_BRACKETS, BROWSERS, COUNTRIES, DEVICE_WEIGHTS, DEVICES, DIMENSIONS,
                                        EVENTS, GENDERS, HOSTS, LANGUAGES, MEASURES, METRICS, NEW_VS_RETURNING,
                                        OPERATING_SYSTEMS, TRAFFIC, DimensionInfo, page)
from tests.emulators.github.data import mix, mix1

EMPTY_SHARE = 0.03  # fact rows whose measures are all zero: only keepEmptyRows=true returns them
LATE_SHARE = (0.5, 0.2)  # the share of today's / yesterday's final values not yet processed at generation 0
LATE_DECAY = 0.8  # each processing generation processes a fifth of what is still missing
FINAL_AGE = len(LATE_SHARE)
REPORT_CACHE_ROWS = 4_000_000
_M64 = (1 << 64) - 1


def cell(value: str) -> str:
    """One value as the wire writes it: `{"value":"..."}`."""
    return '{"value":' + json.dumps(value, ensure_ascii=False) + "}"


def completeness(age: int, generation: int) -> float:
    """The share of a day's final measures processed when the day is `age` days old."""
    if age >= FINAL_AGE:
        return 1.0
    return 1.0 - LATE_SHARE[max(age, 0)] * LATE_DECAY ** generation


def _zipf(n: int, s: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    return weights / weights.sum()


def _coded(ranked: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Code each value (given by rank) by its position among the sorted distinct values; also those cells."""
    values = sorted(set(ranked))
    index = {v: i for i, v in enumerate(values)}
    codes = np.fromiter((index[v] for v in ranked), dtype=np.int64, count=len(ranked))
    return codes, [cell(v) for v in values]


@dataclass(frozen=True)
class Coding:
    """How one dimension reads a fact column: rank -> code, and the wire cell of each code."""

    column: str
    code_of_rank: np.ndarray
    cells: list[str]


class World:
    """The categorical fact columns: how their ranks are drawn, and each dimension's coding of them."""

    def __init__(self, *, page_count: int) -> None:
        self.page_count = page_count
        places = [(country, city, w_country * w_city)
                  for (country, cities), w_country in zip(COUNTRIES, _zipf(len(COUNTRIES), 1.0))
                  for city, w_city in zip((*cities, "(not set)"), _zipf(len(cities) + 1, 0.8))]
        places.append(("(not set)", "(not set)", 0.002))
        self._places = places
        weights = {"place": np.array([p[2] for p in places]), "traffic": _zipf(len(TRAFFIC), 1.0),
                   "device": np.array(DEVICE_WEIGHTS)}
        for column, values in (("host", HOSTS), ("browser", BROWSERS), ("os", OPERATING_SYSTEMS),
                               ("language", LANGUAGES), ("event", EVENTS), ("newret", NEW_VS_RETURNING),
                               ("age", AGE_BRACKETS), ("gender", GENDERS)):
            weights[column] = _zipf(len(values), 1.2)
        self._cumulative = {c: np.cumsum(w / w.sum()) for c, w in weights.items()}
        self._codings: dict[str, Coding] = {}

    def ranks(self, column: str, u: np.ndarray) -> np.ndarray:
        """Draw ranks of `column` from uniforms in [0, 1): low ranks are the popular values."""
        if column == "page":
            return np.minimum(np.floor(self.page_count * u ** 2.5), self.page_count - 1).astype(np.int64)
        cumulative = self._cumulative[column]
        return np.minimum(np.searchsorted(cumulative, u, side="right"), len(cumulative) - 1)

    def coding(self, dimension: str) -> Coding:
        """The coding of a non-date dimension, built on first use (pages: once per process)."""
        hit = self._codings.get(dimension)
        if hit is not None:
            return hit
        info = DIMENSIONS[dimension]
        ranked: Sequence[str]
        if info.column == "place":
            ranked = [p[0 if dimension == "country" else 1] for p in self._places]
        elif info.column == "traffic":
            ranked = [t[("sessionSource", "sessionMedium", "sessionDefaultChannelGroup").index(dimension)]
                      for t in TRAFFIC]
        elif info.column == "page":
            ranked = [page(rank)[0 if dimension == "pagePath" else 1] for rank in range(self.page_count)]
        else:
            ranked = {"device": DEVICES, "host": HOSTS, "browser": BROWSERS, "os": OPERATING_SYSTEMS,
                      "language": LANGUAGES, "event": EVENTS, "newret": NEW_VS_RETURNING, "age": AGE_BRACKETS,
                      "gender": GENDERS}[info.column]
        codes, cells = _coded(ranked)
        hit = self._codings[dimension] = Coding(info.column, codes, cells)
        return hit


def date_code(dimension: str, day: int) -> int:
    """The code of a date dimension on day ordinal `day`; code order is the order of the wire strings."""
    if dimension == "date":
        return day
    date = dt.date.fromordinal(day)
    return {"year": date.year, "yearMonth": date.year * 100 + date.month, "month": date.month,
            "dayOfWeek": day % 7}[dimension]  # ordinal 7 (0001-01-07) is a Sunday: GA4's day 0


def date_cell(dimension: str, code: int) -> str:
    if dimension == "date":
        return cell(dt.date.fromordinal(code).strftime("%Y%m%d"))
    return cell({"year": f"{code:04d}", "yearMonth": f"{code:06d}", "month": f"{code:02d}",
                 "dayOfWeek": str(code)}[dimension])


class FactDay:
    """The fact rows of one property-day; each column is drawn on first use."""

    def __init__(self, world: World, key: int, day: int, rows: int) -> None:
        self.world = world
        self.key = key
        self.day = day
        self.rows = rows
        self._i = np.arange(rows, dtype=np.uint64)
        self._ranks: dict[str, np.ndarray] = {}
        self._measures: dict[str, np.ndarray] | None = None

    def uniform(self, stream: int) -> np.ndarray:
        salt = mix1(self.key ^ ((stream + 1) * 0xD1B54A32D192ED03 & _M64))
        return (mix(self._i + np.uint64(salt)) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53

    def ranks(self, column: str) -> np.ndarray:
        hit = self._ranks.get(column)
        if hit is None:
            hit = self._ranks[column] = self.world.ranks(column, self.uniform(_STREAMS[column]))
        return hit

    def codes(self, dimension: DimensionInfo) -> np.ndarray:
        if dimension.column == "day":
            return np.full(self.rows, date_code(dimension.name, self.day), dtype=np.int64)
        return self.world.coding(dimension.name).code_of_rank[self.ranks(dimension.column)]

    def measures(self) -> dict[str, np.ndarray]:
        """The final (fully processed) additive measures of every fact row, as int64 columns."""
        if self._measures is None:
            u = self.uniform

            def floor(x: np.ndarray) -> np.ndarray:
                return np.floor(x).astype(np.int64)
            live = (u(20) >= EMPTY_SHARE).astype(np.int64)
            sessions = (1 + floor(u(21) ** 4 * 40)) * live
            users = sessions - floor(sessions * 0.4 * u(22))
            views = sessions * (1 + floor(u(23) * 5))
            transactions = (u(24) < 0.04) * live * (1 + floor(u(25) * 2))
            duration_ms = sessions * floor(5_000 + 400_000 * u(26) ** 2)
            self._measures = {
                "sessions": sessions, "engaged": floor(sessions * u(27)), "users": users,
                "new_users": floor(users * 0.6 * u(28)), "total_users": users + floor(users * 0.1 * u(29)),
                "views": views, "events": views + 2 * sessions + floor(u(30) * 5) * live,
                "key_events": transactions + (u(31) < 0.1) * live * (1 + floor(u(32) * 3)),
                "transactions": transactions, "duration_ms": duration_ms,
                "engagement_s": floor(duration_ms * 0.0007 * u(33)),
                "revenue_cents": transactions * floor(500 + 20_000 * u(34) ** 2),
            }
        return self._measures


_STREAMS = {c: i for i, c in enumerate(("place", "traffic", "page", "device", "host", "browser", "os",
                                        "language", "event", "newret", "age", "gender"))}


@dataclass(frozen=True)
class Query:
    """What one report asks for; date ranges are inclusive day ordinals."""

    property_index: int
    ranges: tuple[tuple[int, int], ...]
    dimensions: tuple[str, ...]
    metrics: tuple[str, ...]
    keep_empty: bool


@dataclass(frozen=True)
class Clock:
    """The emulated date and processing generation a report is computed at."""

    today: int
    generation: int


@dataclass(frozen=True)
class Report:
    """Report rows as columns: a code array per dimension (then the date-range index when there are several
    ranges) and a value array per metric, sorted by dimension values."""

    codes: tuple[np.ndarray, ...]
    values: tuple[np.ndarray, ...]
    rows: int


def _group(keys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The order sorting rows by `keys` (first most significant) and where each group starts in it."""
    n = len(keys[0])
    combined = np.zeros(n, dtype=np.int64)
    capacity = 1
    for key in keys:
        low = int(key.min())
        span = int(key.max()) - low + 1
        capacity *= span
        if capacity >= 1 << 62:  # too many combinations for one int64: sort column by column
            order = np.lexsort(keys[::-1])
            differs = np.zeros(n - 1, dtype=bool)
            for k in keys:
                ordered = k[order]
                differs |= ordered[1:] != ordered[:-1]
            return order, np.flatnonzero(np.r_[True, differs])
        combined = combined * span + (key - low)
    order = np.argsort(combined, kind="stable")
    ordered = combined[order]
    return order, np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])


class Dataset:
    """Every property's facts from `first_day` to `last_day` (None: up to the emulated today)."""

    def __init__(self, *, seed: int, rows_per_day: int, first_day: int, last_day: int | None) -> None:
        self.seed = seed
        self.rows_per_day = rows_per_day
        self.first_day = first_day
        self.last_day = last_day
        self.world = World(page_count=max(64, rows_per_day // 2))
        self._reports: OrderedDict[tuple[Query, Clock], Report] = OrderedDict()

    def last_data_day(self, today: int) -> int:
        return today if self.last_day is None else min(self.last_day, today)

    def facts(self, property_index: int, day: int) -> FactDay:
        key = mix1(mix1((self.seed * 0x9E3779B1 + property_index) & _M64) ^ day)
        spread = (mix1(key ^ 0x5DEECE66D) >> 11) * 2.0 ** -53
        return FactDay(self.world, key, day, int(self.rows_per_day * (0.9 + 0.2 * spread)))

    def report(self, query: Query, clock: Clock) -> Report:
        """The whole report (every row, no paging), cached while the process's reports fit in memory."""
        key = (query, clock)
        hit = self._reports.get(key)
        if hit is not None:
            self._reports.move_to_end(key)
            return hit
        report = self._compute(query, clock)
        self._reports[key] = report
        while len(self._reports) > 1 and sum(r.rows for r in self._reports.values()) > REPORT_CACHE_ROWS:
            self._reports.popitem(last=False)
        return report

    def _compute(self, query: Query, clock: Clock) -> Report:
        dimensions = [DIMENSIONS[name] for name in query.dimensions]
        several = len(query.ranges) > 1
        keys: list[list[np.ndarray]] = [[] for _ in range(len(dimensions) + several)]
        measures: dict[str, list[np.ndarray]] = {name: [] for name in MEASURES}
        last = self.last_data_day(clock.today)
        for index, (start, end) in enumerate(query.ranges):
            for day in range(max(start, self.first_day), min(end, last) + 1):
                facts = self.facts(query.property_index, day)
                if not facts.rows:
                    continue
                for parts, dimension in zip(keys, dimensions):
                    parts.append(facts.codes(dimension))
                if several:
                    keys[-1].append(np.full(facts.rows, index, dtype=np.int64))
                scale = completeness(clock.today - day, clock.generation)
                for name, column in facts.measures().items():
                    measures[name].append(column if scale == 1.0 else np.floor(column * scale).astype(np.int64))
        if not measures["sessions"]:
            empty = np.zeros(0, dtype=np.int64)
            return Report(tuple(empty for _ in keys), tuple(empty for _ in query.metrics), 0)
        columns = {name: np.concatenate(parts) for name, parts in measures.items()}
        if keys:
            joined = [np.concatenate(parts) for parts in keys]
            order, starts = _group(joined)
            codes = [key[order[starts]] for key in joined]
            sums = {name: np.add.reduceat(column[order], starts) for name, column in columns.items()}
        else:
            codes, sums = [], {name: column.sum(keepdims=True) for name, column in columns.items()}
        values = [METRICS[name].formula(sums) for name in query.metrics]
        rows = len(sums["events"])
        if not query.keep_empty:
            # A row is empty when every requested metric is zero (a report of dimensions alone: no events).
            keep = np.zeros(rows, dtype=bool)
            for column in values or [sums["events"]]:
                keep |= column != 0
            codes = [c[keep] for c in codes]
            values = [v[keep] for v in values]
            rows = int(keep.sum())
        return Report(tuple(codes), tuple(values), rows)
