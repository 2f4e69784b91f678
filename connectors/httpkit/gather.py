"""Gathering a partition's records: the stream's record rules, keyset de-duplication, Arrow batches,
and the re-reading of cursor values that tie across pages.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from connectors.httpkit.components import CursorParamPaginator, HttpStreamSpec
from connectors.httpkit.paginate import Page, PageRequest, dig
from connectors.httpkit.records import to_batch
from engine.core.protocol import Partition
from engine.core.secrets import Redactor

BATCH_ROWS = 5_000
Fetch = Callable[[PageRequest], Awaitable[list[Any]]]
"""Sends one page request and returns the page's records (already gathered by the caller)."""


class Ties:
    """Keyset paging steps through a cursor value shared by more than a page by page number, and a record
    updated meanwhile leaves that run of pages and shifts the rest back: one could be skipped. So once
    the read moves past such a value, its records are read again until a pass sees none leave."""

    MAX_PASSES = 5

    def __init__(self, spec: HttpStreamSpec, paginator: CursorParamPaginator) -> None:
        self.spec, self.paginator = spec, paginator
        self.path = tuple(paginator.field.split("."))
        self.value: Any = None
        self.members: set[tuple[Any, ...]] = set()
        self.pages = 0

    async def after_page(self, page: Page, nxt: PageRequest | None, fetch: Fetch) -> None:
        """Note the page's records; once the read moves past a value that spanned pages, re-read it with
        `fetch` (which returns a page's records) until a pass sees none of its records leave."""
        p = self.paginator
        value = page.request.params.get(p.param)
        if value != self.value:
            self.value, self.members, self.pages = value, set(), 0
        self.pages += 1
        self.members |= self._keys(page.records, value)
        stays = nxt is not None and nxt.params.get(p.param) == value
        if stays or self.pages < 2 or value is None:
            return
        before = self.members
        for _ in range(self.MAX_PASSES):
            now = await self._reread(page.request, value, fetch)
            if before <= now:
                break  # nobody left during the pass: nothing was shifted out of sight
            before = now
        self.value, self.members, self.pages = None, set(), 0

    async def _reread(self, request: PageRequest, value: Any, fetch: Fetch) -> set[tuple[Any, ...]]:
        """Read every page of the records whose cursor is `value`; return their keys."""
        p = self.paginator
        req: PageRequest | None = replace(
            request, params={**{k: v for k, v in request.params.items() if k != p.page_param}, p.param: value})
        members: set[tuple[Any, ...]] = set()
        while req is not None:
            records = await fetch(req)
            same = self._keys(records, value)
            members |= same
            full = len(records) >= p.size and len(same) == len(records)
            req = req.with_param(p.page_param, int(req.params.get(p.page_param, 1)) + 1) if full else None
        return members

    def _keys(self, records: list[Any], value: Any) -> set[tuple[Any, ...]]:
        return {tuple(r.get(k) for k in self.spec.primary_key) for r in records
                if isinstance(r, dict) and str(dig(r, self.path)) == str(value)}


class Batches:
    """Gathers a partition's records into record batches, applying the stream's record rules."""

    def __init__(self, spec: HttpStreamSpec, partition: Partition, redact: Redactor, *, keyset: bool) -> None:
        self.spec, self.partition, self.redact = spec, partition, redact
        self.declared = {f.name: f.type for f in spec.schema_}
        self.pending: list[dict[str, Any]] = []
        self.batches: list[pa.RecordBatch] = []
        self.stopped = False
        inc = spec.incremental
        self.cursor_path = tuple(inc.cursor_field.split(".")) if inc else ()
        self.lower = partition.window[0]
        self.stop_below = bool(inc and inc.stop_below and self.lower is not None)
        self.seen: set[tuple[Any, ...]] | None = set() if keyset and spec.primary_key else None
        self.extra = {k: v for k, v in partition.where if k != "pages"}
        self.where_url = ""

    def add(self, records: list[Any], request: PageRequest) -> None:
        self.where_url = request.url
        if not (self.stop_below or self.seen is not None):
            self.pending.extend(records)  # the common case: rules are applied per column in `_flush`
        else:
            self._add_one_by_one(records)
        if len(self.pending) >= BATCH_ROWS:
            self._flush()

    def _add_one_by_one(self, records: list[Any]) -> None:
        for r in records:
            if not isinstance(r, dict):
                self.pending.append(r)  # to_batch names the bad record
                continue
            if self.stop_below:
                value = dig(r, self.cursor_path)
                if value is not None and str(value) < str(self.lower):
                    self.stopped = True
                    continue
            if self.seen is not None:
                # Keyset paging re-reads the records that share the boundary value: keep each once.
                key = tuple(r.get(k) for k in self.spec.primary_key) + (str(dig(r, self.cursor_path)),)
                if key in self.seen:
                    continue
                self.seen.add(key)
            self.pending.append(r)

    def _flush(self) -> None:
        if not self.pending:
            return
        batch = to_batch(self.pending, self.declared, where=self.redact(self.where_url))
        self.pending = []
        drop = [f for f in self.spec.drop_if_present if f in batch.schema.names]
        if drop:
            keep = functools.reduce(pc.and_kleene, [pc.is_null(batch.column(f)) for f in drop])
            batch = batch.filter(keep)
            batch = batch.drop_columns(drop)  # all null now: the records that carried them are gone
        for name, value in self.extra.items():
            if name not in batch.schema.names:
                batch = batch.append_column(name, pa.array([value] * batch.num_rows, pa.string()))
        if batch.num_rows:
            self.batches.append(batch)

    def finish(self) -> list[pa.RecordBatch]:
        self._flush()
        return self.batches
