"""Paginators at run time: from one page's response, the request for the next (or None at the end).

Split as the declarative CDKs do: *what* the next token is (a link, a body field, an offset, the last
cursor value) and *where* it goes (the URL, a query parameter, the JSON body). Every paginator also
answers how many pages there are when the API says (`rel="last"`, a total), which lets a stream read
its pages in parallel ranges. A token that repeats is caught by `LoopGuard`, never followed forever.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from connectors.httpkit.components import (
    CursorParamPaginator, JsonPath, LinkHeaderPaginator, NextTokenPaginator, NextUrlPaginator, NoPaginator,
    OffsetPaginator, PageNumberPaginator, Paginator,
)
from connectors.httpkit.errors import HttpFailed

LINK = re.compile(r'<([^>]*)>\s*;\s*rel="?([^";,]+)"?')


@dataclass(frozen=True)
class PageRequest:
    """One request: an absolute URL (a next link may carry its own query), parameters and a JSON body."""

    url: str
    params: dict[str, Any] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    method: str = "GET"

    def with_param(self, name: str, value: Any, *, in_body: bool = False) -> PageRequest:
        if in_body:
            return replace(self, body={**(self.body or {}), name: value})
        return replace(self, params={**self.params, name: value})

    def identity(self) -> str:
        return f"{self.url}?{sorted(self.params.items())}#{sorted((self.body or {}).items()) if self.body else ''}"


@dataclass(frozen=True)
class Page:
    """What a paginator sees of a response."""

    request: PageRequest
    headers: dict[str, str]
    body: Any
    records: list[Any]


def links(headers: dict[str, str]) -> dict[str, str]:
    """Parse an RFC 8288 `Link` header into {rel: url}."""
    out: dict[str, str] = {}
    for url, rels in LINK.findall(headers.get("link", "")):
        for rel in rels.split():
            out[rel] = url
    return out


def dig(body: Any, path: JsonPath) -> Any:
    """Follow `path` into a JSON value; None when any step is missing."""
    for step in path:
        if isinstance(body, dict):
            body = body.get(step)
        elif isinstance(body, list) and step.isdigit() and int(step) < len(body):
            body = body[int(step)]
        else:
            return None
    return body


def first_request(paginator: Paginator, request: PageRequest) -> PageRequest:
    """Add the paginator's page-size parameters to the first request of a partition."""
    p = paginator
    if isinstance(p, (LinkHeaderPaginator, NextTokenPaginator)) and p.size_param and p.size:
        return request.with_param(p.size_param, p.size)
    if isinstance(p, (PageNumberPaginator, CursorParamPaginator)) and p.size_param:
        return request.with_param(p.size_param, p.size)
    if isinstance(p, OffsetPaginator):
        return (request.with_param(p.limit_param, _num(p, p.limit), in_body=p.in_body)
                .with_param(p.offset_param, _num(p, 0), in_body=p.in_body))
    return request


def next_request(paginator: Paginator, page: Page, *, cursor_value: Any = None) -> PageRequest | None:
    """Return the request for the page after `page`, or None when it was the last."""
    p, req = paginator, page.request
    if isinstance(p, NoPaginator):
        return None
    if isinstance(p, LinkHeaderPaginator):
        nxt = links(page.headers).get("next")
        return PageRequest(nxt, {}, req.body, req.method) if nxt and page.records else None
    if isinstance(p, NextTokenPaginator):
        token = dig(page.body, p.token_path)
        # An empty page with a token is not the end: some APIs return one before more data.
        return req.with_param(p.param, token) if token not in (None, "") else None
    if isinstance(p, NextUrlPaginator):
        url = dig(page.body, p.url_path)
        return PageRequest(url, {}, req.body, req.method) if isinstance(url, str) and url else None
    if isinstance(p, OffsetPaginator):
        offset = int(_current(req, p.offset_param, p.in_body) or 0) + p.limit
        total = dig(page.body, p.total_path) if p.total_path else None
        if total is not None:
            if offset >= int(total):
                return None
        elif len(page.records) < p.limit:
            return None
        return req.with_param(p.offset_param, _num(p, offset), in_body=p.in_body)
    if isinstance(p, PageNumberPaginator):
        number = int(req.params.get(p.page_param, p.start))
        total = dig(page.body, p.total_pages_path) if p.total_pages_path else None
        if (total is not None and number + 1 - p.start >= int(total)) or len(page.records) < p.size:
            return None
        return req.with_param(p.page_param, number + 1)
    if isinstance(p, CursorParamPaginator):
        if len(page.records) < p.size:
            return None
        if cursor_value is None:
            raise HttpFailed(f"paginator cursor_param: the last record of {req.url} has no {p.field!r}; "
                             "check the paginator's field")
        if str(cursor_value) == str(req.params.get(p.param)):
            # The whole page shares one cursor value: step through the tie by page number.
            return req.with_param(p.page_param, int(req.params.get(p.page_param, 1)) + 1)
        keyset = req.with_param(p.param, cursor_value)
        return replace(keyset, params={k: v for k, v in keyset.params.items() if k != p.page_param})
    raise AssertionError(f"unknown paginator {p!r}")


def check_first_page(paginator: Paginator, page: Page, *, where: str) -> None:
    """Fail at the first page when the paginator plainly does not match the response (a path that is
    not in the body), instead of silently reading one page."""
    p, body = paginator, page.body
    problem = None
    if isinstance(p, (OffsetPaginator, PageNumberPaginator)):
        path = p.total_path if isinstance(p, OffsetPaginator) else p.total_pages_path
        if path and page.records and dig(body, path) is None:
            problem = f"its total is not at [{', '.join(path)}]"
    elif isinstance(p, NextTokenPaginator) and p.size and len(page.records) >= p.size:
        if dig(body, p.token_path) is None:
            problem = f"the page is full ({len(page.records)} records) but has no token at [{', '.join(p.token_path)}]"
    elif isinstance(p, NextUrlPaginator) and isinstance(body, dict) and p.url_path[0] not in body:
        problem = f"the body has no {p.url_path[0]!r} for [{', '.join(p.url_path)}]"
    if problem:
        keys = ", ".join(list(body)[:12]) if isinstance(body, dict) else type(body).__name__
        raise HttpFailed(f"paginator {p.type} does not match the response from {where}: {problem}; the body has: "
                         f"{keys}. Fix the stream's paginator")


def page_count(paginator: Paginator, page: Page) -> int | None:
    """Return the number of pages the API reports for this request, when it does."""
    p = paginator
    if isinstance(p, LinkHeaderPaginator):
        rels = links(page.headers)
        if "last" not in rels:
            return None if "next" in rels else 1
        values = dict(parse_qsl(urlsplit(rels["last"]).query))
        return int(values[p.page_param]) if values.get(p.page_param, "").isdigit() else None
    if isinstance(p, PageNumberPaginator) and p.total_pages_path:
        total = dig(page.body, p.total_pages_path)
        return int(total) if total is not None else None
    if isinstance(p, OffsetPaginator) and p.total_path:
        total = dig(page.body, p.total_path)
        return max(1, math.ceil(int(total) / p.limit)) if total is not None else None
    return None


def nth_page(paginator: Paginator, first: PageRequest, n: int) -> PageRequest:
    """Return the request for page `n` (1-based) of a paginator that supports page ranges."""
    p = paginator
    if isinstance(p, LinkHeaderPaginator):
        return first.with_param(p.page_param, n)
    if isinstance(p, PageNumberPaginator):
        return first.with_param(p.page_param, p.start + n - 1)
    if isinstance(p, OffsetPaginator):
        return first.with_param(p.offset_param, _num(p, (n - 1) * p.limit), in_body=p.in_body)
    raise AssertionError(f"paginator {p.type} has no page numbers")


class LoopGuard:
    """Fails a partition whose paginator asks for a page it already fetched."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def check(self, request: PageRequest) -> None:
        key = request.identity()
        if key in self.seen:
            raise HttpFailed(f"the paginator asked for a page it already fetched ({request.url.split('?')[0]}, "
                             f"{_short(request)}); the API repeats its page token, or the paginator settings do "
                             "not match the API")
        self.seen.add(key)


def _short(request: PageRequest) -> str:
    text = ", ".join(f"{k}={v}" for k, v in sorted(request.params.items()))
    return text[:200] or (request.url.split("?", 1)[1][:200] if "?" in request.url else "no parameters")


def _num(p: OffsetPaginator, n: int) -> int | str:
    return str(n) if p.as_string else n


def _current(req: PageRequest, name: str, in_body: bool) -> Any:
    return (req.body or {}).get(name) if in_body else req.params.get(name)
