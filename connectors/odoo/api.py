"""Odoo through its external API (`mode: jsonrpc` or `json2`): each model read with `search_read`, archived
records included (`context: {"active_test": false}`, ../shared/api-contracts/odoo.md s.6), in id ranges.

Planning asks the server for the window's upper bound, the count and the id range of the records to
read, and cuts the ids into ranges of about `partition_rows`; each range is one partition (one Ray task).
A partition pages through its range:
- incremental: keyset on (write_date, id), order "write_date asc, id asc", the next page after
  `['|', ['write_date', '>', T], '&', ['write_date', '=', T], ['id', '>', LAST_ID]]` (odoo.md s.6), inside the
  window `write_date >= lo` and `write_date < hi`. hi is fixed while planning, one second past the newest
  write_date (the wire shows whole seconds, odoo.md s.4): a record written while the run reads leaves the window
  and is read by the next run, never skipped and never twice in one extraction. The next window starts
  `lookback_s` before hi (why: connectors/odoo/source.py). A database that keeps fractions of a second makes T
  ('HH:MM:SS') tie with the records just after it: the domain then returns some records again (dropped
  by id), and a page with nothing new reads that second through by id before going on;
- the first extraction also reads records that have no write_date, by id; a full sync pages by id alone,
  without a window (every record once, as it is when its page is read).

Wire values are typed back through `fields_get` (odoo.md s.4): `false` is null except for booleans; a many2one
`[id, "name"]` becomes `<field>` (the id) and `<field>_name`; datetimes "YYYY-MM-DD HH:MM:SS" become UTC
timestamps, dates dates, one2many/many2many lists of ids, integers int64, floats and monetary float64.
Default fields: every stored field but binaries (images) and one2many (their rows are another model's).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, TypeVar

import pyarrow as pa

from connectors.httpkit import EgressPolicy, HttpFailed
from connectors.odoo.rpc import OdooRpc, connect
from connectors.odoo.spec import OdooApiSource
from engine.core.protocol import Partition, Plan, PlanContext, ReadContext
from engine.core.secrets import SecretStore

T = TypeVar("T")
WIRE_DATETIME = "%Y-%m-%d %H:%M:%S"
BATCH_ROWS = 5_000
ARROW: dict[str, pa.DataType] = {
    "integer": pa.int64(), "float": pa.float64(), "monetary": pa.float64(), "boolean": pa.bool_(),
    "date": pa.date32(), "datetime": pa.timestamp("us", tz="UTC"), "many2one": pa.int64(),
    "many2one_reference": pa.int64(), "one2many": pa.list_(pa.int64()), "many2many": pa.list_(pa.int64()),
}
"""Odoo field types with a typed column; others (char, text, html, selection, binary ...) are text."""
ALSO_READ = {"product.product": ("name",)}
"""Fields read by default although not stored: a variant's name comes from its template (as in mode postgres)."""


class OdooStreamShape:
    """What every Odoo stream says of itself, in either mode: named after its table, keyed by `id`, with
    cursor `write_date` (odoo.md s.6)."""

    table: str

    @property
    def name(self) -> str:
        return self.table

    @property
    def primary_key(self) -> tuple[str, ...]:
        return ("id",)

    @property
    def cursor_field(self) -> str | None:
        return "write_date"

    def schema(self) -> pa.Schema | None:
        return None


@dataclass(frozen=True)
class OdooApiStream(OdooStreamShape):
    """One model read through the API; a value (the HTTP session is opened in each task)."""

    spec_name: str
    table: str
    model: str
    company: str
    source: OdooApiSource
    egress: EgressPolicy

    task_cpus = 0.5
    """Reads mostly wait on the server: two per CPU."""

    def context(self) -> dict[str, Any]:
        return {"active_test": False, "lang": self.source.lang}

    def company_domain(self) -> list[Any]:
        """`companies`: their records and shared ones, as mode postgres filters (record rules are the ORM's)."""
        ids = list(self.source.companies)
        if not ids:
            return []
        if self.company == "id":
            return [["id", "in", ids]]
        field = "product_tmpl_id.company_id" if self.company == "template" else "company_id"
        return ["|", [field, "in", ids], [field, "=", False]]

    def run(self, secrets: dict[str, str], store: Any, work: Callable[[OdooRpc], Awaitable[T]]) -> T:
        """Run `work` with an OdooRpc on its own event loop."""
        if store is None:
            raise HttpFailed("Odoo API streams need the run's secret store in their context")

        async def go() -> T:
            async with connect(self.source, self.egress, secrets, store) as rpc:
                return await work(rpc)

        return asyncio.run(go())

    async def search_read(self, rpc: OdooRpc, domain: list[Any], fields: list[str], order: str,
                          limit: int) -> list[dict[str, Any]]:
        rows = await rpc.call(self.model, "search_read", domain, fields=fields, order=order, limit=limit,
                              context=self.context())
        if not isinstance(rows, list):
            raise HttpFailed(f"Odoo {self.source.base_url}: {self.model}.search_read answered "
                             f"{type(rows).__name__}, not a list of records")
        return rows

    async def fields(self, rpc: OdooRpc) -> list[tuple[str, str]]:
        """(name, Odoo type) of the fields to read: the spec's, else the stored ones (see the docstring)."""
        described = await rpc.call(self.model, "fields_get", attributes=["type", "store"], context=self.context())
        if not isinstance(described, dict):
            raise HttpFailed(f"Odoo {self.source.base_url}: {self.model}.fields_get answered no field descriptions")
        wanted = self.source.fields.get(self.table)
        if wanted:
            unknown = [f for f in wanted if f not in described]
            if unknown:
                raise HttpFailed(f"stream {self.table}: {self.model} has no field {', '.join(unknown)}; it has: "
                                 f"{', '.join(sorted(described)[:40])}")
            names = list(wanted)
        else:
            names = [n for n, d in described.items() if d.get("store") and d.get("type") not in ("binary", "one2many")]
            names += [n for n in ALSO_READ.get(self.model, ()) if n in described]
        names = list(dict.fromkeys(["id", *names, "write_date"]))
        return [(n, str(described.get(n, {}).get("type", "integer" if n == "id" else "char"))) for n in names]

    # -- planning (driver) ----------------------------------------------------------------------------

    def plan(self, ctx: PlanContext) -> Plan:
        return self.run(ctx.secrets, ctx.options.get("secret_store"), lambda rpc: self._plan(rpc, ctx))

    async def _plan(self, rpc: OdooRpc, ctx: PlanContext) -> Plan:
        if self.source.fields.get(self.table):
            await self.fields(rpc)  # a misspelt field fails the run before any partition is read
        if ctx.sync_mode != "incremental":
            return Plan(await self._partitions(rpc, (None, None)))
        lo = shift(ctx.cursor, -self.source.lookback_s) if ctx.cursor else None
        since = [["write_date", ">=", lo]] if lo else [["write_date", "!=", False]]
        newest = await self.search_read(rpc, self.company_domain() + since, ["write_date"],
                                        "write_date desc, id desc", 1)
        if not newest:
            return Plan([], cursor_to=ctx.cursor)
        hi = shift(newest[0]["write_date"], 1)  # exclusive: the newest second is read whole
        return Plan(await self._partitions(rpc, (lo, hi)), cursor_to=hi)

    async def _partitions(self, rpc: OdooRpc, window: tuple[str | None, str | None]) -> list[Partition]:
        domain = self.company_domain() + window_domain(window)
        count = await rpc.call(self.model, "search_count", domain, context=self.context())
        if not count:
            return []
        first = await self.search_read(rpc, domain, ["id"], "id asc", 1)
        last = await self.search_read(rpc, domain, ["id"], "id desc", 1)
        if not first or not last:
            return []
        lo, hi = first[0]["id"], last[0]["id"]
        n = max(1, min(math.ceil(count / self.source.partition_rows), hi - lo + 1))
        step = math.ceil((hi - lo + 1) / n)
        return [Partition(self.table, (("from", a), ("to", min(a + step, hi + 1))), window)
                for a in range(lo, hi + 1, step)]

    # -- reading (Ray task) ---------------------------------------------------------------------------

    def open(self, ctx: ReadContext) -> OdooApiReader:
        return OdooApiReader(self, ctx.secrets, ctx.options.get("secret_store"))


class OdooApiReader:
    """Reads one id range of a model (see the module docstring for the paging)."""

    def __init__(self, stream: OdooApiStream, secrets: dict[str, str], store: SecretStore | None) -> None:
        self.stream, self.secrets, self.store = stream, secrets, store
        self.size = stream.source.page_size

    def read(self, partition: Partition) -> Iterator[pa.RecordBatch]:
        yield from self.stream.run(self.secrets, self.store, lambda rpc: self._read(rpc, partition))

    async def _read(self, rpc: OdooRpc, partition: Partition) -> list[pa.RecordBatch]:
        out = Records(await self.stream.fields(rpc))
        where = dict(partition.where)
        ids = self.stream.company_domain() + [["id", ">=", where["from"]], ["id", "<", where["to"]]]
        lo, hi = partition.window
        if hi is None:
            await self._by_id(rpc, ids, out)
        else:
            await self._by_write_date(rpc, ids, lo, hi, out)
            if lo is None:
                await self._by_id(rpc, ids + [["write_date", "=", False]], out)
        return out.finish()

    async def _page(self, rpc: OdooRpc, domain: list[Any], order: str, out: Records) -> tuple[list[Any], int]:
        rows = await self.stream.search_read(rpc, domain, out.names, order, self.size)
        return rows, out.add(rows)

    async def _by_id(self, rpc: OdooRpc, domain: list[Any], out: Records) -> None:
        after: list[Any] = []
        while True:
            rows, _ = await self._page(rpc, domain + after, "id asc", out)
            if len(rows) < self.size:
                return
            after = [["id", ">", rows[-1]["id"]]]

    async def _by_write_date(self, rpc: OdooRpc, ids: list[Any], lo: str | None, hi: str, out: Records) -> None:
        window = ids + [["write_date", "<", hi], ["write_date", ">=", lo] if lo else ["write_date", "!=", False]]
        after: list[Any] = []
        while True:
            rows, fresh = await self._page(rpc, window + after, "write_date asc, id asc", out)
            if len(rows) < self.size:
                return
            t, last = rows[-1]["write_date"], rows[-1]["id"]
            if fresh:
                after = ["|", ["write_date", ">", t], "&", ["write_date", "=", t], ["id", ">", last]]  # odoo.md s.6
                continue
            # Nothing new: the page is one second whose fractions all tie with T on the wire.
            await self._by_id(rpc, window + [["write_date", ">=", t], ["write_date", "<", shift(t, 1)]], out)
            after = [["write_date", ">=", shift(t, 1)]]


def window_domain(window: tuple[str | None, str | None]) -> list[Any]:
    """The records of a cursor window [lo, hi); the first (no lo) also takes records without write_date."""
    lo, hi = window
    if hi is None:
        return []
    if lo is None:
        return ["|", ["write_date", "=", False], ["write_date", "<", hi]]
    return [["write_date", ">=", lo], ["write_date", "<", hi]]


def shift(wire: str, seconds: int) -> str:
    """A wire datetime ("YYYY-MM-DD HH:MM:SS", UTC) moved by `seconds`."""
    return (datetime.fromisoformat(wire[:19]) + timedelta(seconds=seconds)).strftime(WIRE_DATETIME)


class Records:
    """A partition's records as typed Arrow batches, each id once."""

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self.fields = fields
        self.names = [n for n, _ in fields]
        columns: list[tuple[str, pa.DataType]] = []
        for name, kind in fields:
            columns.append((name, ARROW.get(kind, pa.string())))
            if kind == "many2one":
                columns.append((f"{name}_name", pa.string()))
        self.schema = pa.schema(columns)
        self.seen: set[int] = set()
        self.rows: list[dict[str, Any]] = []
        self.batches: list[pa.RecordBatch] = []

    def add(self, records: list[Any]) -> int:
        """Keep the records not seen before; return how many that was."""
        fresh = [r for r in records if isinstance(r, dict) and r.get("id") not in self.seen]
        self.seen.update(r["id"] for r in fresh)
        self.rows += fresh
        if len(self.rows) >= BATCH_ROWS:
            self._flush()
        return len(fresh)

    def finish(self) -> list[pa.RecordBatch]:
        self._flush()
        return self.batches

    def _flush(self) -> None:
        if not self.rows:
            return
        arrays = []
        for name, kind in self.fields:
            values = [r.get(name, False) for r in self.rows]
            arrays.append(pa.array([typed(kind, v) for v in values], self.schema.field(name).type))
            if kind == "many2one":
                arrays.append(pa.array([v[1] if isinstance(v, list) and len(v) > 1 else None for v in values],
                                       pa.string()))
        self.batches.append(pa.RecordBatch.from_arrays(arrays, schema=self.schema))
        self.rows = []


def typed(kind: str, value: Any) -> Any:
    """One wire value as its column holds it (odoo.md s.4)."""
    if kind == "boolean":
        return bool(value)  # false is a value here, not an empty one
    if value is False or value is None:
        return [] if kind in ("one2many", "many2many") else None
    if kind == "many2one":
        return value[0] if isinstance(value, list) else value
    if kind == "datetime":
        return datetime.strptime(value[:19], WIRE_DATETIME).replace(tzinfo=timezone.utc)
    if kind == "date":
        return date.fromisoformat(value[:10])
    if kind not in ARROW and not isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # json/properties fields, or anything unexpected
    return value
