"""The HTTP connector toolkit: components a REST stream is composed from (STYLE 2).

    components.py  spec models (paginators, error rules, retry, rate limit, partitioners, cursor)
    egress.py      where requests may go (https only; no private, link-local or metadata addresses)
    auth.py        static credentials and token exchanges (OAuth 2.0 refresh, Google service account)
    credential.py  one Ray actor per credential: shared budget, single-flight token refresh
    budget.py      the token bucket and the API's own quota signals
    requester.py   one request: budget, auth, redirects, error table, retries (tenacity)
    paginate.py    next-page logic and page counts
    records.py     JSON records to Arrow
    gather.py      a partition's records: record rules, keyset de-duplication, ties across pages
    cursor.py      cursor bounds, lookback and date windows
    stream.py      HttpStream: plan partitions, read pages in parallel
    errors.py      the error table (DEFAULT_RULES) and the errors a reader raises

Connectors import the names below from `connectors.httpkit`; the modules of the toolkit import each other
directly (never this package, which would make an import cycle). Tests of one component may import its
module.
"""

from __future__ import annotations

from connectors.httpkit.auth import AccessToken, AnyAuth, TokenExchange, needs_exchange, static_credentials
from connectors.httpkit.budget import Budget, Grant
from connectors.httpkit.components import (
    CursorParamPaginator, DateWindows, ErrorRule, FieldType, HttpSource, HttpStreamSpec, Incremental, JsonPath,
    LinkHeaderPaginator, NextTokenPaginator, NextUrlPaginator, NoPaginator, OffsetPaginator, PageNumberPaginator,
    PageRanges, Paginator, ParentPartitioner, RateLimit, RetryPolicy, ValuesPartitioner, WherePartitioner,
    checked_base_url,
)
from connectors.httpkit.credential import CredentialRef
from connectors.httpkit.egress import CheckedTransport, EgressPolicy, EgressRefused, refuse_link_local
from connectors.httpkit.errors import (
    DEFAULT_RULES, AuthExpired, HttpFailed, HttpRetryable, QuotaDeferred, RateLimited, api_message, classify,
    retry_after_seconds,
)
from connectors.httpkit.paginate import Page, PageRequest
from connectors.httpkit.records import loads, to_batch
from connectors.httpkit.requester import CredentialHandle, Requester, Response, Tokens, seconds_to_reset
from connectors.httpkit.stream import HttpApi, HttpStream, Prepare, Quota, QuotaReading, QuotaScope, Shape

__all__ = [
    # spec models (components.py)
    "CursorParamPaginator", "DateWindows", "ErrorRule", "FieldType", "HttpSource", "HttpStreamSpec", "Incremental",
    "JsonPath", "LinkHeaderPaginator", "NextTokenPaginator", "NextUrlPaginator", "NoPaginator", "OffsetPaginator",
    "PageNumberPaginator", "PageRanges", "Paginator", "ParentPartitioner", "RateLimit", "RetryPolicy",
    "ValuesPartitioner", "WherePartitioner", "checked_base_url",
    # streams (stream.py)
    "HttpApi", "HttpStream", "Prepare", "Quota", "QuotaReading", "QuotaScope", "Shape",
    # requests (requester.py, paginate.py, records.py, credential.py, budget.py, auth.py)
    "AccessToken", "AnyAuth", "Budget", "CredentialHandle", "CredentialRef", "Grant", "Page", "PageRequest",
    "Requester", "Response", "TokenExchange", "Tokens", "loads", "needs_exchange", "seconds_to_reset",
    "static_credentials", "to_batch",
    # where requests may go (egress.py)
    "CheckedTransport", "EgressPolicy", "EgressRefused", "refuse_link_local",
    # the error table and errors (errors.py)
    "DEFAULT_RULES", "AuthExpired", "HttpFailed", "HttpRetryable", "QuotaDeferred", "RateLimited", "api_message",
    "classify", "retry_after_seconds",
]
