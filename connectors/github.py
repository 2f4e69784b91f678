"""GitHub (FR-029): repositories, commits, pull requests, issues and issue comments.

Quirks, per ../shared/api-contracts/github.md:
- lists are top-level arrays paged by `Link` headers; `rel="last"` gives the page count, so a full read
  of a large repository fetches its pages in parallel ranges (sorted by creation, which updates never
  reorder; new items land on the last, open range);
- issues and comments take `since` (updated at or after, inclusive): incremental reads page by keyset
  on `updated_at`, so an item updated mid-read is re-read, never skipped; pulls have no `since`, so they
  are read newest-updated first and the read stops below the cursor (s.6);
- pull requests also appear among issues, marked by a `pull_request` key: dropped from `issues` (s.4);
- rate limits: `x-ratelimit-*` headers feed the credential's budget; 403/429 with `retry-after` or an
  exhausted `x-ratelimit-remaining` wait; a reset beyond the wait cap parks the run (s.7);
- 409 on commits of an empty repository is an empty list, not an error (s.8).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from connectors.httpkit import (
    CursorParamPaginator, ErrorRule, HttpApi, HttpSource, HttpStream, HttpStreamSpec, Incremental, LinkHeaderPaginator,
    PageRanges, ParentPartitioner, RateLimit, RetryPolicy, ValuesPartitioner, checked_base_url,
)
from engine.core.spec import ConnectorSpec, SpecModel, repeated

HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
RULES = (
    ErrorRule(status=(409,), body_contains="empty", action="ignore"),
    ErrorRule(status=(404,), action="fail",
              message="the repository or organisation does not exist, or the token cannot see it "
                      "(GitHub answers 404 for private repositories without access)"),
)


class GitHubSource(SpecModel):
    """Which repositories to read, and how hard to drive the API."""

    base_url: str = "https://api.github.com"
    """API root; `https://HOST/api/v3` for GitHub Enterprise Server."""
    repos: tuple[str, ...] = ()
    """Repositories as `owner/name`."""
    org: str | None = None
    """Read every repository of this organisation (listed when the run is planned)."""
    start: str | None = None
    """Read issues, comments and commits updated at or after this ISO 8601 time on a first sync."""
    per_page: int = Field(default=100, ge=1, le=100)
    pages_per_partition: int = Field(default=50, ge=1)
    """Pages per read task on full reads of large repositories."""
    lookback_s: int = Field(default=300, ge=0)
    """Seconds re-read behind the stored cursor (clock skew; GitHub's data is otherwise real-time)."""
    concurrency: int = Field(default=16, ge=1, le=32)
    """Pages in flight per read task (GitHub allows 100 concurrent requests per token in all)."""
    rate_limit: RateLimit = RateLimit(requests_per_second=15, burst=15)
    """GitHub's secondary limit allows 900 points a minute per endpoint, a GET costing one (github.md
    s.7): 15 requests a second. The primary 5,000 an hour is tracked from the response headers."""
    retry: RetryPolicy = RetryPolicy()

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return checked_base_url(value)  # no credentials in it (use `auth:`)

    @model_validator(mode="after")
    def _some_repos(self) -> GitHubSource:
        if not self.repos and not self.org:
            raise ValueError("give `repos` (owner/name ...) or `org`")
        bad = [r for r in self.repos if r.count("/") != 1 or r.startswith("/") or r.endswith("/")]
        if bad:
            raise ValueError(f"repos must be owner/name; not: {', '.join(bad)}")
        twice = repeated(self.repos)
        if twice:
            raise ValueError(f"repos listed more than once: {', '.join(twice)}")
        return self


class GitHubSpec(ConnectorSpec):
    """A spec reading GitHub repositories."""

    source_type: Literal["github"]
    source: GitHubSource


def _listing(name: str, path: str, *, cursor: str, since: bool, pk: tuple[str, ...], s: GitHubSource,
             full_sort: str = "created", drop: tuple[str, ...] = ()) -> HttpStreamSpec:
    link = LinkHeaderPaginator(type="link_header", size=s.per_page)
    if since:
        incremental = Incremental(
            cursor_field=cursor, param="since", lookback_s=s.lookback_s, start=s.start,
            params={"sort": "updated", "direction": "asc"},
            paginator=CursorParamPaginator(type="cursor_param", param="since", field=cursor, size=s.per_page),
        )
    else:  # pulls: no `since`; newest-updated first, stop below the cursor
        incremental = Incremental(cursor_field=cursor, lookback_s=s.lookback_s, stop_below=True,
                                  params={"sort": "updated", "direction": "desc"})
    params: dict[str, str | int | float | bool] = {"state": "all", "sort": full_sort, "direction": "asc"}
    return HttpStreamSpec(
        name=name, path=path, params=params, primary_key=pk, paginator=link,
        partitions=_repo_partitions(s), page_ranges=PageRanges(pages_per_partition=s.pages_per_partition),
        incremental=incremental, drop_if_present=drop,
    )


def _repo_partitions(s: GitHubSource) -> ValuesPartitioner | ParentPartitioner:
    if s.repos:
        return ValuesPartitioner(type="values", field="repo", values=s.repos)
    return ParentPartitioner(type="parent", stream="repositories", parent_field="full_name", field="repo")


def streams(spec: GitHubSpec) -> list[HttpStream]:
    """Return the GitHub streams: repositories, commits, pull_requests, issues, issue_comments."""
    s = spec.source
    source = HttpSource(base_url=s.base_url, headers=HEADERS, rate_limit=s.rate_limit, retry=s.retry,
                        concurrency=s.concurrency, streams=(_repositories(s),))
    api = HttpApi.of("github", source, spec.auth, rules=RULES)
    repos = _repositories(s)
    commits = HttpStreamSpec(
        name="commits", path="/repos/{repo}/commits", primary_key=("sha",),
        paginator=LinkHeaderPaginator(type="link_header", size=s.per_page), partitions=_repo_partitions(s),
        incremental=Incremental(cursor_field="commit.author.date", param="since", lookback_s=s.lookback_s,
                                start=s.start),
    )
    specs = [
        repos,
        commits,
        _listing("pull_requests", "/repos/{repo}/pulls", cursor="updated_at", since=False, pk=("id",), s=s),
        _listing("issues", "/repos/{repo}/issues", cursor="updated_at", since=True, pk=("id",), s=s,
                 drop=("pull_request",)),
        _listing("issue_comments", "/repos/{repo}/issues/comments", cursor="updated_at", since=True, pk=("id",),
                 s=s),
    ]
    parent = repos if not s.repos else None
    return [HttpStream(api, x, parent=parent if x is not repos else None) for x in specs]


def _repositories(s: GitHubSource) -> HttpStreamSpec:
    if s.repos:
        return HttpStreamSpec(name="repositories", path="/repos/{repo}", primary_key=("id",),
                              partitions=ValuesPartitioner(type="values", field="repo", values=s.repos))
    return HttpStreamSpec(name="repositories", path=f"/orgs/{s.org}/repos", primary_key=("id",),
                          params={"type": "all", "sort": "full_name"},
                          paginator=LinkHeaderPaginator(type="link_header", size=s.per_page))
