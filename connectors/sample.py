"""The `sample` source: a deterministic shop (customers, orders, order lines) that changes day by day.

No network, any scale. Every value is a pure function of (seed, id, simulated day), computed with
vectorised hashing, so any id range can be generated in any task, in any order, and replayed to the
same bytes. The source clock is `today` (days since 2026-01-01 UTC): rows created before it exist,
and rows change on a fixed schedule (orders move placed -> paid -> shipped -> delivered; customers
gain tiers), so an incremental sync on a later `today` sees new and changed rows only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from engine.core.protocol import Partition, Plan, PlanContext, ReadContext
from engine.core.spec import ConnectorSpec, SpecModel

ORIGIN = datetime(2026, 1, 1, tzinfo=timezone.utc)
DAY_US = 86_400_000_000
ORDER_STEP_DAYS = np.array([0, 1, 2, 5])
ORDER_STATUSES = pa.array(["placed", "paid", "shipped", "delivered", "cancelled"])
TIERS = pa.array(["new", "bronze", "silver", "gold", "platinum"])
FIRST = pa.array("Ada Alan Grace Linus Margaret Ken Barbara Dennis Frances Edsger Radia Donald Sophie "
                 "Tim Hedy Guido Anita Niklaus Shafi Lynn Jean Ivan Mary Yukihiro Karen".split())
LAST = pa.array("Lovelace Turing Hopper Torvalds Hamilton Thompson Liskov Ritchie Allen Dijkstra Perlman "
                "Knuth Wilson Berners-Lee Lamarr Rossum Borg Wirth Goldwasser Conway Sammet Sutherland "
                "Shaw Matsumoto Jones".split())
COUNTRIES = pa.array(["US", "DE", "FR", "GB", "PH", "JP", "BR", "IN", "CA", "AU", "NL", "SG"])
CURRENCIES = pa.array(["USD", "EUR", "EUR", "GBP", "PHP", "JPY", "BRL", "INR", "CAD", "AUD", "EUR", "SGD"])
DOMAINS = pa.array(["example.com", "mail.test", "shop.example", "corp.example"])
ADJECTIVES = "Red Blue Green Small Large Smart Classic Eco Pro Mini Ultra Quiet".split()
NOUNS = "Mug Lamp Chair Desk Bottle Backpack Notebook Keyboard Headphones Kettle Plant Clock".split()
PRODUCTS = pa.array([f"{a} {n}" for a in ADJECTIVES for n in NOUNS])
SKUS = 5_000
NOTES = pa.array(["gift wrap", "leave at door", None])  # one order in ten each; the rest have none


class SampleSource(SpecModel):
    """Size and clock of the simulated shop."""

    seed: int = 7
    """Changes every generated value; the same seed always gives the same data."""
    days: int = Field(default=30, ge=1, le=36_500)
    """Days of history the shop has when `today` reaches it; rows are spread evenly over them."""
    today: int | None = Field(default=None, ge=1)
    """The source's clock in days since 2026-01-01; defaults to `days`. Raise it to see new changes."""
    customers: int = Field(default=10_000, ge=1)
    """Customers created over `days`."""
    orders: int = Field(default=100_000, ge=1)
    """Orders created over `days`; each has 1 to 4 order lines."""
    partition_rows: int = Field(default=250_000, ge=1_000)
    """Source rows per partition (one Ray task); keep each task above ~100 ms of work."""
    read_delay_ms: int = Field(default=0, ge=0)
    """Pause inside every read task, to imitate a slow source."""

    @model_validator(mode="after")
    def _today_default(self) -> SampleSource:
        if self.today is None:
            object.__setattr__(self, "today", self.days)
        return self


class SampleSpec(ConnectorSpec):
    """A spec reading the built-in sample shop."""

    source_type: Literal["sample"]
    source: SampleSource = SampleSource()


def _mix(x: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """Return a splitmix64 hash of `x` (uint64) under (seed, salt): a deterministic pseudo-random draw."""
    z = x.astype(np.uint64) + np.uint64((seed * 0x9E3779B1 + salt * 0x85EBCA77) & 0xFFFFFFFFFFFFFFFF)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _pick(vocab: pa.Array, h: np.ndarray) -> pa.Array:
    return vocab.take(pa.array(h % np.uint64(len(vocab))))


def _money(cents: np.ndarray) -> pa.Array:
    """Return a decimal(12,2) array from integer cents without going through floats."""
    words = np.zeros((len(cents), 2), dtype=np.int64)
    words[:, 0] = cents
    words[:, 1] = np.where(cents < 0, -1, 0)
    return pa.Array.from_buffers(pa.decimal128(12, 2), len(cents), [None, pa.py_buffer(words)])


def _ts(us: np.ndarray) -> pa.Array:
    return pa.array(us.astype(np.int64), type=pa.timestamp("us", tz="UTC"))


def iso(us: int) -> str:
    """Return a cursor value: microseconds since the epoch as a lossless UTC ISO string."""
    return (datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=us)).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )


def parse_iso(value: str) -> int:
    dt = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    return (dt - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)


ORIGIN_US = (ORIGIN - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)

CUSTOMER_SCHEMA = pa.schema([
    ("id", pa.int64()), ("name", pa.string()), ("email", pa.string()), ("country", pa.string()),
    ("tier", pa.string()), ("lifetime_value", pa.decimal128(12, 2)), ("version", pa.int32()),
    ("created_at", pa.timestamp("us", tz="UTC")), ("updated_at", pa.timestamp("us", tz="UTC")),
])
ORDER_SCHEMA = pa.schema([
    ("id", pa.int64()), ("customer_id", pa.int64()), ("status", pa.string()), ("currency", pa.string()),
    ("amount", pa.decimal128(12, 2)), ("item_count", pa.int32()), ("shipping_country", pa.string()),
    ("notes", pa.string()), ("created_at", pa.timestamp("us", tz="UTC")),
    ("updated_at", pa.timestamp("us", tz="UTC")),
])
LINE_SCHEMA = pa.schema([
    ("order_id", pa.int64()), ("line_no", pa.int32()), ("sku", pa.string()), ("product_name", pa.string()),
    ("quantity", pa.int32()), ("unit_price", pa.decimal128(12, 2)),
    ("created_at", pa.timestamp("us", tz="UTC")),
])


@dataclass(frozen=True)
class Shop:
    """The generator: pure functions from id ranges to Arrow batches as of `today`."""

    seed: int
    days: int
    today: int
    customers: int
    orders: int

    def per_day(self, total: int) -> int:
        return -(-total // self.days)

    def existing(self, total: int) -> int:
        """Ids below this exist as of `today`."""
        return min(total, self.per_day(total) * self.today)

    def _created_us(self, ids: np.ndarray, total: int, salt: int) -> tuple[np.ndarray, np.ndarray]:
        day = ids // self.per_day(total)
        second = _mix(ids, self.seed, salt) % np.uint64(86_400)
        return day, ORIGIN_US + day * DAY_US + second.astype(np.int64) * 1_000_000

    def customers_batch(self, lo: int, hi: int) -> pa.RecordBatch:
        ids = np.arange(lo, hi, dtype=np.int64)
        day, created = self._created_us(ids, self.customers, 1)
        h = _mix(ids, self.seed, 2)
        period = (5 + h % np.uint64(11)).astype(np.int64)
        version = np.maximum(0, (self.today - 1 - day) // period)
        updated = created + version * period * DAY_US
        first, last = _pick(FIRST, h >> np.uint64(8)), _pick(LAST, h >> np.uint64(16))
        email = pc.binary_join_element_wise(
            pc.utf8_lower(first), ".", pc.utf8_lower(pc.replace_substring(last, "-", "")),
            ".", pc.cast(pa.array(ids), pa.string()), "@", _pick(DOMAINS, h >> np.uint64(24)), "",
        )
        ltv = version * ((h >> np.uint64(32)) % np.uint64(40_000)).astype(np.int64)
        return pa.RecordBatch.from_arrays([
            pa.array(ids), pc.binary_join_element_wise(first, last, " "), email,
            _pick(COUNTRIES, h >> np.uint64(40)), TIERS.take(pa.array(np.minimum(version, 4))),
            _money(ltv), pa.array(version.astype(np.int32)), _ts(created), _ts(updated),
        ], schema=CUSTOMER_SCHEMA)

    def orders_batch(self, lo: int, hi: int) -> pa.RecordBatch:
        ids = np.arange(lo, hi, dtype=np.int64)
        day, created = self._created_us(ids, self.orders, 11)
        h = _mix(ids, self.seed, 12)
        customers_then = np.minimum(self.customers, (day + 1) * self.per_day(self.customers))
        customer = (h % customers_then.astype(np.uint64)).astype(np.int64)
        elapsed = self.today - 1 - day
        step = np.searchsorted(ORDER_STEP_DAYS, elapsed, side="right") - 1
        cancelled = (h >> np.uint64(20)) % np.uint64(20) == 0
        step = np.where(cancelled, np.minimum(step, 1), step)
        status = np.where(cancelled & (step == 1), 4, step)
        updated = created + ORDER_STEP_DAYS[step] * DAY_US
        items = (1 + (h >> np.uint64(8)) % np.uint64(4)).astype(np.int32)
        country = (h >> np.uint64(28)) % np.uint64(len(COUNTRIES))
        notes = NOTES.take(pa.array(np.minimum((h >> np.uint64(36)) % np.uint64(10), 2).astype(np.int64)))
        return pa.RecordBatch.from_arrays([
            pa.array(ids), pa.array(customer), ORDER_STATUSES.take(pa.array(status)),
            CURRENCIES.take(pa.array(country)), _money(((h >> np.uint64(40)) % np.uint64(50_000)).astype(np.int64) + 99),
            pa.array(items), COUNTRIES.take(pa.array(country)), notes, _ts(created), _ts(updated),
        ], schema=ORDER_SCHEMA)

    def lines_batch(self, lo: int, hi: int) -> pa.RecordBatch:
        orders = np.arange(lo, hi, dtype=np.int64)
        _, created = self._created_us(orders, self.orders, 11)
        count = (1 + (_mix(orders, self.seed, 12) >> np.uint64(8)) % np.uint64(4)).astype(np.int64)
        order_id = np.repeat(orders, count)
        starts = np.repeat(np.cumsum(count) - count, count)
        line_no = (np.arange(len(order_id)) - starts + 1).astype(np.int32)
        h = _mix(order_id * 8 + line_no, self.seed, 21)
        sku = (h % np.uint64(SKUS)).astype(np.int64)
        sku_h = _mix(sku, self.seed, 22)
        return pa.RecordBatch.from_arrays([
            pa.array(order_id), pa.array(line_no),
            pc.binary_join_element_wise("SKU-", pc.cast(pa.array(sku), pa.string()), ""),
            _pick(PRODUCTS, sku_h), pa.array((1 + (h >> np.uint64(16)) % np.uint64(5)).astype(np.int32)),
            _money(((sku_h >> np.uint64(20)) % np.uint64(20_000)).astype(np.int64) + 199),
            _ts(np.repeat(created, count)),
        ], schema=LINE_SCHEMA)


@dataclass(frozen=True)
class SampleReader:
    """Generates the rows of one partition, keeping those whose cursor lies in the partition's window."""

    shop: Shop
    stream: SampleStream
    read_delay_ms: int

    def read(self, partition: Partition) -> Iterator[pa.RecordBatch]:
        if self.read_delay_ms:
            time.sleep(self.read_delay_ms / 1000)
        where = dict(partition.where)
        generate = {"customers": self.shop.customers_batch, "orders": self.shop.orders_batch,
                    "order_lines": self.shop.lines_batch}[self.stream.name]
        lo_w, hi_w = partition.window
        step = 100_000 if self.stream.name != "order_lines" else 40_000
        for lo in range(where["ids_from"], where["ids_to"], step):
            batch = generate(lo, min(lo + step, where["ids_to"]))
            if lo_w is not None:
                # Every generated row is at or before `hi_w` (the source clock), so only `lo_w` filters.
                cursor = batch.column(self.stream.cursor_field)
                batch = batch.filter(pc.greater(cursor, pa.scalar(parse_iso(lo_w), cursor.type)))
            if batch.num_rows:
                yield batch


@dataclass(frozen=True)
class SampleStream:
    """One table of the shop, partitioned by id range (order lines by their order's id range)."""

    name: str
    primary_key: tuple[str, ...]
    cursor_field: str
    config: SampleSource
    # Orders stop changing this many days after creation (ORDER_STEP_DAYS), so an incremental read
    # need not scan older ids: the sample's stand-in for an index on updated_at.
    settles_after_days: int | None

    @property
    def shop(self) -> Shop:
        c = self.config
        return Shop(seed=c.seed, days=c.days, today=c.today or c.days, customers=c.customers, orders=c.orders)

    def schema(self) -> pa.Schema:
        return {"customers": CUSTOMER_SCHEMA, "orders": ORDER_SCHEMA, "order_lines": LINE_SCHEMA}[self.name]

    def plan(self, ctx: PlanContext) -> Plan:
        shop = self.shop
        total = shop.customers if self.name == "customers" else shop.orders
        ids_to = shop.existing(total)
        now = iso(ORIGIN_US + shop.today * DAY_US)
        lo_window: str | None = ctx.cursor if ctx.sync_mode == "incremental" else None
        incremental = lo_window is not None
        ids_from = 0
        if lo_window is not None and self.settles_after_days is not None:
            cursor_day = (parse_iso(lo_window) - ORIGIN_US) // DAY_US
            ids_from = max(0, min(ids_to, (cursor_day - self.settles_after_days) * shop.per_day(total)))
        rows_per_id = 2.5 if self.name == "order_lines" else 1.0
        span = max(1, int(self.config.partition_rows / rows_per_id))
        if incremental:
            span *= 8  # most ids in range are filtered out at the source; keep tasks worth their cost
        if lo_window is not None and lo_window >= now:
            return Plan(partitions=[], cursor_to=lo_window)
        parts = [
            Partition(self.name, (("ids_from", lo), ("ids_to", min(lo + span, ids_to))), (lo_window, now))
            for lo in range(ids_from, ids_to, span)
        ]
        return Plan(partitions=parts, cursor_to=now)

    def open(self, ctx: ReadContext) -> SampleReader:
        return SampleReader(self.shop, self, self.config.read_delay_ms)


def streams(spec: SampleSpec) -> list[SampleStream]:
    """Return the shop's streams for `spec`."""
    c = spec.source
    return [
        SampleStream("customers", ("id",), "updated_at", c, None),
        SampleStream("orders", ("id",), "updated_at", c, int(ORDER_STEP_DAYS[-1]) + 1),
        SampleStream("order_lines", ("order_id", "line_no"), "created_at", c, 0),
    ]
