"""HTTP toolkit components as spec models: what a YAML spec declares for a REST API stream.

Each model validates straight from YAML (STYLE 6) and is a frozen value that crosses Ray boundaries.
Runtime behaviour lives beside them: `paginate.py` (paginators), `errors.py` (the error table),
`requester.py` (retries, following `RetryPolicy`), `budget.py` and `credential.py` (rate limits and
quotas), `stream.py` (partitioners), `cursor.py` and `gather.py` (cursors, incremental windows).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field, field_validator, model_validator

from engine.core.spec import SpecModel, repeated
from engine.core.urls import is_credential_name

JsonPath = tuple[str, ...]
"""A path into a JSON body: keys of objects, or decimal indexes of arrays (`["data", "items"]`)."""

PLACEHOLDER = re.compile(r"{([a-z_][a-z0-9_]*)}")
CREDENTIAL_HEADER = re.compile(r"authorization|cookie|api[-_]?key|token|secret|passw(or)?d|auth", re.IGNORECASE)
"""Header names that carry credentials (Authorization, Cookie, X-API-Key, X-Auth-Token, Private-Token ...):
never written in a spec's `headers`, whose values are stored and shown in clear."""


# -- paginators: what the next page is, and where its token goes ---------------------------------------


class NoPaginator(SpecModel):
    """The endpoint answers in one page."""

    type: Literal["none"] = "none"


class LinkHeaderPaginator(SpecModel):
    """Follow `Link: <url>; rel="next"` until absent (RFC 8288; GitHub, many others).

    `rel="last"` reveals the page count, so a `page_ranges` partitioner can fetch pages in parallel.
    """

    type: Literal["link_header"]
    page_param: str = "page"
    """Query parameter holding the page number inside the link URLs (for page ranges)."""
    size_param: str | None = "per_page"
    size: int | None = Field(default=100, ge=1)


class NextTokenPaginator(SpecModel):
    """The body carries an opaque token for the next page, sent back as a query parameter (or body field)."""

    type: Literal["next_token"]
    token_path: JsonPath
    """Where the token is in the body, e.g. `[meta, next_cursor]`; absent, null or empty ends the stream."""
    param: str
    """Query parameter (or JSON body field for POST) the token is sent in."""
    size_param: str | None = None
    size: int | None = Field(default=None, ge=1)


class NextUrlPaginator(SpecModel):
    """The body carries the full URL of the next page (`links.next`, `@odata.nextLink` ...)."""

    type: Literal["next_url"]
    url_path: JsonPath


class OffsetPaginator(SpecModel):
    """Offset and limit; stops on a short page, or at a total the body reports."""

    type: Literal["offset"]
    limit: int = Field(default=100, ge=1)
    offset_param: str = "offset"
    limit_param: str = "limit"
    total_path: JsonPath | None = None
    """Where the body reports the total row count (`rowCount`, `meta.total`); enables page ranges."""
    in_body: bool = False
    """Send offset and limit in the JSON body (POST report APIs such as GA4) instead of the query."""
    as_string: bool = False
    """Send the numbers as strings (int64 fields of Google APIs)."""


class PageNumberPaginator(SpecModel):
    """Page numbers from `start`; stops on a short or empty page, or at a page count the body reports."""

    type: Literal["page_number"]
    page_param: str = "page"
    start: int = Field(default=1, ge=0)
    size_param: str | None = "per_page"
    size: int = Field(default=100, ge=1)
    total_pages_path: JsonPath | None = None


class CursorParamPaginator(SpecModel):
    """Keyset paging on the cursor field: the next request sends the last record's cursor value.

    Safe while the source changes under the reader (records updated mid-read move past the cursor and
    are read again, never skipped). When a whole page shares one cursor value, the page parameter
    steps through the tie.
    """

    type: Literal["cursor_param"]
    param: str
    """Query parameter that takes the cursor value (`since`, `updated_after` ...); inclusive."""
    field: str
    """Record field holding the cursor value."""
    page_param: str = "page"
    size_param: str | None = "per_page"
    size: int = Field(default=100, ge=1)


Paginator = Annotated[
    NoPaginator | LinkHeaderPaginator | NextTokenPaginator | NextUrlPaginator | OffsetPaginator
    | PageNumberPaginator | CursorParamPaginator,
    Field(discriminator="type"),
]


# -- the error table --------------------------------------------------------------------------------------

Action = Literal["retry", "rate_limited", "refresh_auth", "fail", "ignore", "deferred"]


class ErrorRule(SpecModel):
    """Map a response to an action; the first matching rule wins, spec rules before the defaults."""

    status: tuple[int, ...] = ()
    """Statuses this rule matches (empty: any status that is not 2xx)."""
    body_contains: str | None = None
    """Match only when the body contains this text (case-insensitive)."""
    header_equals: tuple[str, str] | None = None
    """Match only when this header has this value, e.g. `[x-ratelimit-remaining, "0"]`."""
    action: Action
    """`retry` with backoff; `rate_limited` waits for Retry-After or the quota reset; `refresh_auth`
    gets a new access token and tries once more; `fail` stops the partition with the API's message;
    `ignore` treats the response as an empty page; `deferred` parks the run until the quota resets."""
    message: str | None = None
    """Advice added to the error when the action is `fail`."""
    wait_s: float | None = Field(default=None, gt=0)
    """For `rate_limited` / `deferred`: seconds to hold the credential when the response says no
    `Retry-After` or reset time (GA4's quota messages each imply their own wait)."""
    reset_every: Literal["hour", "day"] | None = None
    """For `rate_limited` / `deferred`: the quota resets at the next full hour or midnight."""
    reset_timezone: str = "UTC"
    """Time zone of `reset_every: day` (Google's daily quotas reset at midnight America/Los_Angeles)."""


# -- retry and rate limits ------------------------------------------------------------------------------


class RetryPolicy(SpecModel):
    """Exponential backoff with full jitter and a cap; `Retry-After` (seconds or HTTP-date) wins."""

    max_attempts: int = Field(default=8, ge=1, le=100)
    initial_s: float = Field(default=0.5, gt=0)
    max_s: float = Field(default=60.0, gt=0)
    max_wait_s: float = Field(default=900.0, gt=0)
    """Longest rate-limit wait served in place; a longer one parks the run as `deferred`."""
    timeout_s: float = Field(default=60.0, gt=0)
    """Per-request timeout."""


class RateLimit(SpecModel):
    """The request budget of one credential, shared by every task of every run that uses it."""

    requests_per_second: float | None = Field(default=None, gt=0)
    """Token-bucket rate; null means no fixed rate (the API's own headers still slow us down)."""
    burst: int = Field(default=10, ge=1)
    remaining_header: str | None = "x-ratelimit-remaining"
    reset_header: str | None = "x-ratelimit-reset"
    reset_kind: Literal["epoch_seconds", "delta_seconds"] = "epoch_seconds"
    reserve: int = Field(default=0, ge=0)
    """Requests left untouched in each window (for other tools sharing the credential)."""


# -- partitioners and cursors ---------------------------------------------------------------------------


class ValuesPartitioner(SpecModel):
    """One partition per listed value (repositories, accounts, properties ...)."""

    type: Literal["values"]
    field: str
    """Name under which the value fills `{field}` in the path, and the column it lands in (unless the
    records carry a field of that name themselves)."""
    values: tuple[str, ...] = Field(min_length=1)

    @field_validator("values")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        twice = repeated(value)
        if twice:
            raise ValueError(f"listed more than once: {', '.join(twice)}")
        return value


class ParentPartitioner(SpecModel):
    """One partition per record of a parent stream, read when the run is planned (repos -> issues)."""

    type: Literal["parent"]
    stream: str
    """Name of the parent stream in the same spec."""
    parent_field: str
    """Field of each parent record that names the child, e.g. `full_name`."""
    field: str
    """Name that fills `{field}` in the child's path."""


WherePartitioner = Annotated[ValuesPartitioner | ParentPartitioner, Field(discriminator="type")]


class DateWindows(SpecModel):
    """Split the cursor range into windows of `step_days`, one partition each (report APIs)."""

    start: str
    """First date (YYYY-MM-DD) of a first sync."""
    step_days: int = Field(default=1, ge=1, le=3_660)
    start_param: str | None = None
    """Query parameter taking the window's first date; null when the request body carries it."""
    end_param: str | None = None


class PageRanges(SpecModel):
    """Fetch one partition's pages in parallel ranges when the API reveals the page count.

    Used on full reads only (an incremental read follows its cursor). The last range stays open, so
    records added while the run reads are still collected.
    """

    pages_per_partition: int = Field(default=100, ge=1)


class Incremental(SpecModel):
    """An incremental cursor: the field, how the API takes it, and how far back to re-read."""

    cursor_field: str
    """Record field holding the cursor (`updated_at`); dotted for nested fields (`commit.author.date`)."""
    param: str | None = None
    """Query parameter the lower bound is sent in (`since`); null when the paginator or windows use it."""
    format: Literal["iso8601", "epoch_seconds", "epoch_millis", "date"] = "iso8601"
    lookback_s: int = Field(default=0, ge=0)
    """Seconds re-read behind the stored cursor, for late-arriving data."""
    start: str | None = None
    """Lower bound of a first sync (ISO 8601); null reads everything."""
    stop_below: bool = False
    """The endpoint sorts newest first and has no cursor parameter: stop paging at the first record
    whose cursor is below the lower bound (GitHub pulls)."""
    params: dict[str, str | int | float | bool] = Field(default_factory=dict)
    """Extra query parameters when reading from a stored cursor (e.g. `sort: updated`)."""
    paginator: Paginator | None = None
    """Paginator when reading from a stored cursor; defaults to the stream's. `cursor_param` (keyset
    paging) never skips a record updated while the stream is read."""


class FieldType(SpecModel):
    """A declared column type for bronze; undeclared fields are inferred (nested values kept as JSON text)."""

    name: str
    type: Literal["string", "int64", "float64", "bool", "json"]


class HttpStreamSpec(SpecModel):
    """One REST endpoint read as a stream."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,47}$")
    path: str
    """Path under `base_url`; `{name}` placeholders are filled by the stream's partitioner."""
    method: Literal["GET", "POST"] = "GET"
    params: dict[str, str | int | float | bool] = Field(default_factory=dict)
    body: dict[str, object] | None = None
    """JSON body for POST endpoints."""
    records: JsonPath = ()
    """Path to the array of records in the body; empty when the body itself is the array (or one record)."""
    primary_key: tuple[str, ...] = ()
    paginator: Paginator = NoPaginator()
    partitions: WherePartitioner | None = None
    windows: DateWindows | None = None
    page_ranges: PageRanges | None = None
    incremental: Incremental | None = None
    errors: tuple[ErrorRule, ...] = ()
    """Rules tried before the connector's defaults."""
    schema_: tuple[FieldType, ...] = Field(default=(), alias="schema")
    """Declared bronze column types."""
    drop_if_present: tuple[str, ...] = ()
    """Drop records in which any of these fields is present and not null (GitHub's `pull_request` in issues)."""

    @model_validator(mode="after")
    def _coherent(self) -> HttpStreamSpec:
        names = set(PLACEHOLDER.findall(self.path))
        offered = {self.partitions.field} if self.partitions else set()
        unknown = names - offered
        if unknown:
            raise ValueError(f"path {self.path!r} uses {{{', '.join(sorted(unknown))}}}, which no partitioner "
                             f"fills; add `partitions` with that `field`"
                             + (f" (it fills {{{', '.join(sorted(offered))}}})" if offered else ""))
        if self.page_ranges and not isinstance(self.paginator, (LinkHeaderPaginator, PageNumberPaginator,
                                                               OffsetPaginator)):
            raise ValueError("page_ranges needs a paginator that reveals the page count "
                             "(link_header, page_number or offset)")
        if isinstance(self.paginator, CursorParamPaginator) and self.incremental is None:
            raise ValueError("paginator cursor_param needs `incremental` (its field is the cursor)")
        if self.windows is not None and self.incremental is None:
            raise ValueError("windows need `incremental` (the cursor they advance)")
        return self

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        if "://" in value or not value.startswith("/"):
            raise ValueError("path must start with / and be relative to base_url")
        return value


class HttpSource(SpecModel):
    """A REST API: where it is, how hard it may be driven, and its streams."""

    base_url: str
    """`https://` root of the API; plain `http://` only to loopback in dev mode (IPAI_DEV_MODE=1)."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Headers sent with every request; never credentials (Authorization, Cookie, API keys, tokens: use
    `auth`, which keeps them in the Vault and off redirects to other hosts)."""
    rate_limit: RateLimit = RateLimit()
    retry: RetryPolicy = RetryPolicy()
    concurrency: int = Field(default=8, ge=1, le=64)
    """Pages in flight at once within one read task (page ranges)."""
    streams: tuple[HttpStreamSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _parents_exist(self) -> HttpSource:
        names = [s.name for s in self.streams]
        for s in self.streams:
            if isinstance(s.partitions, ParentPartitioner):
                if s.partitions.stream not in names:
                    raise ValueError(f"stream {s.name}: parent stream {s.partitions.stream!r} is not defined; "
                                     f"defined: {', '.join(names)}")
                if s.partitions.stream == s.name:
                    raise ValueError(f"stream {s.name} cannot be its own parent")
        return self

    @field_validator("base_url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        return checked_base_url(value)

    @field_validator("headers")
    @classmethod
    def _no_credentials(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if CREDENTIAL_HEADER.search(name):
                raise ValueError(f"header {name!r} carries credentials, which a spec never holds in clear; use "
                                 "`auth:` (bearer, basic, or api_key with `header: NAME`), whose values are "
                                 "references to the Vault ({secret: NAME})")
        return value


def checked_base_url(value: str) -> str:
    """A spec's `base_url`: http(s), without a trailing slash or credentials (egress rules apply when it is
    used)."""
    if not value.startswith(("https://", "http://")):
        raise ValueError("base_url must start with https:// (http:// only to loopback in dev mode)")
    parts = urlsplit(value)
    if parts.username is not None or parts.password is not None:
        raise ValueError("base_url carries credentials (user:password@); remove them and use `auth:` (basic, "
                         "bearer or api_key), whose values are references to the Vault ({secret: NAME})")
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        if is_credential_name(name):
            raise ValueError(f"base_url carries a credential in its parameter `{name}=`; remove it and use "
                             "`auth:` (api_key with `query_param: NAME`), whose value is a reference to the Vault")
    return value.rstrip("/")
