"""`HttpStream`: a REST endpoint as a stream, composed from the toolkit's components.

Planning (on the driver) turns the partitioner, the cursor and the page count into partitions:
one per parent record or listed value, per date window, or per range of pages when the API reveals
how many there are. Reading (in a Ray task) fetches a partition's pages, several at once for page
ranges, and yields Arrow record batches.

Partition `where` keys: the partitioner's field (e.g. `repo`), and `pages` (`"3-5"`, or `"6-9+"` for
the last range: pages 6 to 9 as counted when planning, then `next` links to the end). Windows are
`(lower bound, upper bound)` in the cursor's format; the lower bound is sent inclusively (APIs take
`since` as "at or after").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import pyarrow as pa

from connectors.httpkit.auth import AnyAuth, needs_exchange, static_credentials
from connectors.httpkit.components import (
    PLACEHOLDER, CursorParamPaginator, ErrorRule, HttpSource, HttpStreamSpec, ParentPartitioner, RateLimit,
    RetryPolicy, ValuesPartitioner,
)
from connectors.httpkit.credential import CredentialRef
from connectors.httpkit.cursor import format_bound, minus, parse_time, windows
from connectors.httpkit.egress import EgressPolicy
from connectors.httpkit.errors import DEFAULT_RULES, HttpFailed
from connectors.httpkit.gather import Batches, Ties
from connectors.httpkit.paginate import (
    LoopGuard, Page, PageRequest, check_first_page, dig, first_request, next_request, nth_page, page_count,
)
from connectors.httpkit.records import loads
from connectors.httpkit.requester import CredentialHandle, Requester, Response, Tokens
from engine.core.protocol import Partition, Plan, PlanContext, ReadContext
from engine.core.secrets import Redactor, SecretStore

Shape = Callable[[Any, Partition], list[dict[str, Any]]]
"""Turns a page body into records (for APIs whose rows are not plain objects, such as GA4's)."""
Prepare = Callable[[PageRequest, Partition], PageRequest]
"""Adjusts a partition's first request (e.g. puts its date window into a POST body)."""


@dataclass(frozen=True)
class QuotaReading:
    """What a response body says is left of one quota window (GA4's `propertyQuota`)."""

    window: str
    remaining: int
    reset_at: float
    limit: int | None = None


Quota = Callable[[Any], list[QuotaReading]]
"""Reads quota figures from a page body, for the credential's budget."""
QuotaScope = Callable[[Partition], str]
"""Names the part of the API whose quota a partition's requests draw on (GA4: its property)."""


@dataclass(frozen=True)
class HttpApi:
    """What every stream of one API shares; a value."""

    source_type: str
    base_url: str
    auth: AnyAuth
    headers: tuple[tuple[str, str], ...] = ()
    rate_limit: RateLimit = RateLimit()
    retry: RetryPolicy = RetryPolicy()
    concurrency: int = 8
    egress: EgressPolicy = EgressPolicy()
    rules: tuple[ErrorRule, ...] = ()
    """The connector's rules, tried after a stream's own and before the defaults."""

    @classmethod
    def of(cls, source_type: str, source: HttpSource, auth: AnyAuth, *, rules: tuple[ErrorRule, ...] = ()) -> HttpApi:
        return cls(source_type, source.base_url, auth, tuple(source.headers.items()), source.rate_limit,
                   source.retry, source.concurrency, EgressPolicy.from_environment(), rules)

    def credential(self, secrets: dict[str, str], store: SecretStore) -> CredentialRef:
        return CredentialRef.of(scope=f"{self.source_type} {self.base_url}", auth=self.auth,
                                rate_limit=self.rate_limit, max_wait_s=self.retry.max_wait_s, store=store,
                                egress=self.egress, secrets=secrets)


@dataclass(frozen=True)
class HttpStream:
    """A stream of a REST API (see the module docstring for how it plans and reads)."""

    api: HttpApi
    spec: HttpStreamSpec
    parent: HttpStreamSpec | None = None
    shape: Shape | None = None
    prepare: Prepare | None = None
    quota: Quota | None = None
    quota_scope: QuotaScope | None = None
    """Without it, the quota a body reports is the whole credential's: spent, it holds every request."""

    task_cpus = 0.5
    """Reads wait on the network half the time or more: two per CPU keep the cores busy."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def primary_key(self) -> tuple[str, ...]:
        return self.spec.primary_key

    @property
    def cursor_field(self) -> str | None:
        return self.spec.incremental.cursor_field if self.spec.incremental else None

    def schema(self) -> pa.Schema | None:
        return None

    # -- planning (driver) ----------------------------------------------------------------------------

    def plan(self, ctx: PlanContext) -> Plan:
        inc = self.spec.incremental
        lower, upper = None, None
        if inc is not None:
            upper = format_bound(ctx.run_started_at, inc.format)
            if ctx.sync_mode == "incremental" and ctx.cursor is not None:
                lower = minus(ctx.cursor, inc.lookback_s, inc.format)
            elif inc.start is not None:
                lower = format_bound(parse_time(inc.start), inc.format)
        wheres = self._wheres(ctx)
        partitions: list[Partition] = []
        from_cursor = ctx.sync_mode == "incremental" and ctx.cursor is not None
        if self.spec.page_ranges is not None and self.spec.windows is None and not from_cursor:
            return Plan(self._page_ranges(ctx, wheres, (lower, upper)), cursor_to=upper)
        for where in wheres:
            if self.spec.windows is not None:
                partitions += [Partition(self.name, where, w) for w in windows(self.spec, lower, upper)]
            else:
                partitions.append(Partition(self.name, where, (lower, upper)))
        return Plan(partitions, cursor_to=upper)

    def _wheres(self, ctx: PlanContext) -> list[tuple[tuple[str, Any], ...]]:
        p = self.spec.partitions
        if p is None:
            return [()]
        if isinstance(p, ValuesPartitioner):
            return [((p.field, v),) for v in p.values]
        assert isinstance(p, ParentPartitioner) and self.parent is not None
        parent = HttpStream(self.api, self.parent)
        reader = parent.open(ReadContext(run_id="plan", instance_id="plan", secrets=ctx.secrets,
                                         options={"secret_store": ctx.options.get("secret_store")}))
        values: list[Any] = []
        for batch in reader.read(Partition(self.parent.name)):
            if p.parent_field not in batch.schema.names:
                raise HttpFailed(f"stream {self.name}: parent stream {self.parent.name} has no field "
                                 f"{p.parent_field!r}; it has: {', '.join(batch.schema.names[:20])}")
            values += batch.column(p.parent_field).to_pylist()
        return [((p.field, v),) for v in dict.fromkeys(v for v in values if v is not None)]

    def _page_ranges(self, ctx: PlanContext, wheres: list[tuple[tuple[str, Any], ...]],
                     window: tuple[Any, Any]) -> list[Partition]:
        """Ask each partition's page count (all at once), and split its pages into ranges."""
        assert self.spec.page_ranges is not None
        reader = self.open(ReadContext(run_id="plan", instance_id="plan", secrets=ctx.secrets,
                                       options={"secret_store": ctx.options.get("secret_store")}))
        counts = reader.count_pages([Partition(self.name, where, window) for where in wheres])
        step = self.spec.page_ranges.pages_per_partition
        out = []
        for where, pages in zip(wheres, counts, strict=True):
            last = max(pages, 1)
            starts = list(range(1, last + 1, step))
            ranges = [f"{a}-{a + step - 1}" for a in starts[:-1]] + [f"{starts[-1]}-{last}+"]
            out += [Partition(self.name, where + (("pages", r),), window) for r in ranges]
        return out

    # -- reading (Ray task) ---------------------------------------------------------------------------

    def open(self, ctx: ReadContext) -> HttpReader:
        store = ctx.options.get("secret_store")
        if store is None:
            raise HttpFailed("HTTP streams need the run's secret store in the read context")
        return HttpReader(self, ctx.secrets, store, etags=dict(ctx.options.get("notes", {}).get("etag", {})))


class HttpReader:
    """Reads partitions of one stream inside a Ray task (or on the driver, for planning).

    A partition read in a single page is remembered by its ETag (a note the driver records once the
    partition is committed); the next run sends it as `If-None-Match`, and a 304 means nothing changed:
    no rows, and on GitHub no cost against the rate limit (github.md s.7).
    """

    def __init__(self, stream: HttpStream, secrets: dict[str, str], store: SecretStore, *,
                 etags: dict[str, str] | None = None) -> None:
        self.stream, self.secrets, self.store = stream, secrets, store
        self.spec = stream.spec
        self.redact = Redactor.of(secrets.values())
        self.actor: Any = None
        self.etags = etags or {}
        self.new_etags: dict[str, str] = {}

    def notes(self) -> dict[str, dict[str, str]]:
        return {"etag": self.new_etags} if self.new_etags else {}

    def read(self, partition: Partition) -> Iterator[pa.RecordBatch]:
        yield from asyncio.run(self._collect(partition))

    def count_pages(self, partitions: list[Partition]) -> list[int]:
        """Return each partition's page count, asking for them concurrently."""
        async def count_all(requester: Requester) -> list[int]:
            sem = asyncio.Semaphore(self.stream.api.concurrency)

            async def one(p: Partition) -> int:
                async with sem:
                    return await self._count(requester, p)

            return list(await asyncio.gather(*(one(p) for p in partitions)))

        return asyncio.run(self._with_requester(count_all))

    async def _with_requester(self, work: Callable[[Requester], Any], *, scope: str = "") -> Any:
        api = self.stream.api
        ref = api.credential(self.secrets, self.store)
        actor = self.actor = CredentialHandle(lambda: ref.handle(self.secrets))
        headers, params = static_credentials(api.auth, self.secrets)
        connector = aiohttp.TCPConnector(limit=api.concurrency, resolver=api.egress.resolver())
        async with aiohttp.ClientSession(connector=connector) as session:
            requester = Requester(
                session=session, actor=actor, tokens=Tokens(actor, self.store) if needs_exchange(api.auth) else None,
                headers={**dict(api.headers), **headers}, params=params,
                rules=self.spec.errors + api.rules + DEFAULT_RULES, retry=api.retry,
                rate_limit=api.rate_limit, egress=api.egress, redact=self.redact, scope=scope,
                auth_headers=tuple(headers), auth_params=tuple(params),
            )
            return await work(requester)

    async def _count(self, requester: Requester, partition: Partition) -> int:
        first = self._first(partition)
        response = await requester.send(first)
        page = self._page(first, response, partition)
        pages = page_count(self.spec.paginator, page)
        if pages is None:
            raise HttpFailed(f"stream {self.spec.name}: page_ranges needs the page count, but "
                             f"{self.redact(response.url)} did not say it (no rel=\"last\" link or total)")
        return pages

    async def _collect(self, partition: Partition) -> list[pa.RecordBatch]:
        out = Batches(self.spec, partition, self.redact,
                       keyset=isinstance(self._paginator(partition), CursorParamPaginator))
        await self._with_requester(lambda rq: self._read(rq, partition, out), scope=self._scope(partition))
        return out.finish()

    def _scope(self, partition: Partition) -> str:
        return self.stream.quota_scope(partition) if self.stream.quota_scope is not None else ""

    async def _read(self, requester: Requester, partition: Partition, out: Batches) -> None:
        where = dict(partition.where)
        first = self._first(partition)
        if "pages" not in where:
            await self._follow(requester, first, partition, out)
            return
        text = str(where["pages"])
        open_end = text.endswith("+")
        lo, _, last = text.rstrip("+").partition("-")
        numbers = list(range(int(lo), int(last) + 1))
        sem = asyncio.Semaphore(self.stream.api.concurrency)

        async def fetch(n: int) -> Page:
            async with sem:
                req = nth_page(self._paginator(partition), first, n)
                response = await requester.send(req)
            page = self._page(req, response, partition)
            out.add(page.records, page.request)  # converted while later pages are still on the wire
            return page

        pages = await asyncio.gather(*(fetch(n) for n in numbers))
        if open_end:
            # The last range: its pages known at planning are fetched above, all at once; what was added
            # since is reached by following the API's own `next` from there, to the end.
            nxt = next_request(self._paginator(partition), pages[-1]) if pages[-1].records else None
            if nxt is not None:
                await self._follow(requester, nxt, partition, out)

    async def _follow(self, requester: Requester, request: PageRequest | None, partition: Partition,
                      out: Batches) -> None:
        guard = LoopGuard()
        paginator = self._paginator(partition)
        first, identity = True, request.identity() if request is not None else ""
        ties = Ties(self.spec, paginator) if isinstance(paginator, CursorParamPaginator) else None

        async def fetch(req: PageRequest) -> list[Any]:  # a page re-read for `ties`, gathered like the others
            again = self._page(req, await requester.send(req), partition)
            out.add(again.records, req)
            return again.records

        while request is not None:
            guard.check(request)
            known = self.etags.get(identity) if first else None
            response = await requester.send(request, extra_headers={"If-None-Match": known} if known else None)
            if first and response.status == 304:
                self.new_etags[identity] = known or ""
                return  # unchanged since a committed read: its rows are in bronze already
            page = self._page(request, response, partition)
            if first:
                check_first_page(paginator, page, where=self.redact(response.url))
            out.add(page.records, request)
            last = page.records[-1] if page.records else None
            cursor = dig(last, tuple(self.spec.incremental.cursor_field.split("."))) if (
                last is not None and self.spec.incremental) else None
            nxt = None if out.stopped else next_request(paginator, page, cursor_value=cursor)
            if ties is not None and self.spec.primary_key:
                await ties.after_page(page, nxt, fetch)
            request = nxt
            if first and request is None and response.headers.get("etag") and self._same_each_run():
                self.new_etags[identity] = response.headers["etag"]  # the whole partition was this one page
            first = False

    def _same_each_run(self) -> bool:
        """Whether a partition's first request is the same in every run (its lower bound is not sent), so
        that an ETag kept from one run can match in the next."""
        inc = self.spec.incremental
        return inc is None or (inc.param is None and inc.paginator is None and self.spec.windows is None)

    def _paginator(self, partition: Partition) -> Any:
        inc = self.spec.incremental
        if inc is not None and inc.paginator is not None and _from_cursor(partition):
            return inc.paginator
        return self.spec.paginator

    def _first(self, partition: Partition) -> PageRequest:
        where = dict(partition.where)
        path = PLACEHOLDER.sub(lambda m: str(where[m.group(1)]), self.spec.path)
        request = PageRequest(self.stream.api.base_url + path, dict(self.spec.params),
                              dict(self.spec.body) if self.spec.body is not None else None, self.spec.method)
        inc, lower, upper = self.spec.incremental, partition.window[0], partition.window[1]
        if inc is not None and lower is not None:
            if _from_cursor(partition):
                request = replace(request, params={**request.params, **inc.params})
            if inc.param:
                request = request.with_param(inc.param, lower)
        windows = self.spec.windows
        if windows is not None:
            if windows.start_param and lower is not None:
                request = request.with_param(windows.start_param, lower)
            if windows.end_param and upper is not None:
                request = request.with_param(windows.end_param, upper)
        paginator = self._paginator(partition)
        request = first_request(paginator, request)
        if isinstance(paginator, CursorParamPaginator) and lower is not None:
            request = request.with_param(paginator.param, lower)
        if self.stream.prepare is not None:
            request = self.stream.prepare(request, partition)
        return request

    def _page(self, request: PageRequest, response: Response, partition: Partition) -> Page:
        if response.status == 304 or not response.body:
            return Page(request, response.headers, None, [])
        try:
            body = loads(response.body)
        except ValueError as exc:
            snippet = response.body[:200].decode("utf-8", errors="replace")
            raise HttpFailed(f"{self.redact(response.url)} answered malformed JSON ({exc}); the body begins: "
                             f"{self.redact(snippet)!r}") from None
        if self.stream.quota is not None and self.actor is not None:
            for q in self.stream.quota(body):
                self.actor.tell("observe", q.remaining, q.reset_at, q.limit, q.window, self._scope(partition))
        if self.stream.shape is not None:
            records = self.stream.shape(body, partition)
        else:
            records = dig(body, self.spec.records) if self.spec.records else body
            if not self.spec.records and isinstance(body, dict):
                records = [body]  # a single-object endpoint (`GET /repos/{repo}`): the body is the record
            if not isinstance(records, list):
                keys = ", ".join(list(body)[:12]) if isinstance(body, dict) else type(body).__name__
                path = "[" + ", ".join(self.spec.records) + "]"
                raise HttpFailed(f"stream {self.spec.name}: records path {path} does not lead to a list in the "
                                 f"response from {self.redact(response.url)}; the body has: {keys}. Fix the "
                                 "stream's `records` path")
        return Page(request, response.headers, body, records)


def _from_cursor(partition: Partition) -> bool:
    """Whether a partition reads from a lower bound (a stored cursor or the start), not a range of pages."""
    return partition.window[0] is not None and not any(k == "pages" for k, _ in partition.where)
