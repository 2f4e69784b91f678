"""GitHub REST emulator, per ../shared/api-contracts/github.md (sections 1-9 and its emulator checklist).

    python -m tests.emulators.github --port 0 --token T [--org acme] [--repos 3] [--issues-per-repo 1000]
        [--commits-per-repo 200] [--seed 0] [OAuth options from base.py]

API routes (GET; `Authorization: Bearer|token <token>` and a `User-Agent` required):
    /orgs/{org}/repos  /repos/{owner}/{repo}  /repos/{owner}/{repo}/issues  /repos/{owner}/{repo}/pulls
    /repos/{owner}/{repo}/issues/comments  /repos/{owner}/{repo}/commits  /rate_limit (not counted)

Lists are top-level arrays paged by `per_page` (1..100, default 30) and `page`, with a Link header
(prev, next, last, first; every query parameter kept) unless everything fits one page. Defaults follow
GitHub's reference: issues `state=open&sort=created&direction=desc`; pulls direction `desc` for
`sort=created`, else `asc`; repository issue comments ascend by id unless `sort` is given; commits newest
first. Filters not listed in the docstring of a route (labels, assignee, head, ...) are ignored.

Admin routes beyond base.py's:
    POST /_emulator/github/touch   {"repo": "acme/repo1", "numbers": [..]}  updated_at := now
    POST /_emulator/github/insert  {"repo": "acme/repo1", "count": n}      n new open issues, created now
    POST /_emulator/github/delete  {"repo": "acme/repo1", "numbers": [..]}  issues vanish (no tombstone)
    GET  /_emulator/github/truth?repo=acme/repo1&state=all                 every current issue, as columns
Faults beyond base.py's, applied to issue list requests before they are answered (pages shift while read):
    insert_between_pages / touch_between_pages / delete_between_pages
        {"every": k, "count": n, "times": m}: on every k-th issues request (at most m times) insert n new
        issues, or touch / delete the first n issues of the order that request reads.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

import numpy as np
from aiohttp import web

from tests.emulators.base import Emulator, Reply, json_reply, oauth_config, run
from tests.emulators.faults import Every, Parser, parse_every
from tests.emulators.github.data import Organisation, Repo
from tests.emulators.github.render import ISSUE_IDS, Renderer, iso
from tests.emulators.requestlog import credential_id

PAGE_CACHE = 512
_DOCS = "https://docs.github.com/rest"


@dataclass
class Shift:
    """A change to an issue list while it is being read: on which requests, and how many issues."""

    every: Every
    count: int


def _shift(value: Any, name: str) -> Shift:
    if not isinstance(value, dict) or set(value) - {"every", "count", "times"}:
        raise ValueError(f'{name} must look like {{"every": k, "count": n, "times": m}} (times optional)')
    every = parse_every({"every": value.get("every"), "count": value.get("times")}, name)
    count = value.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"{name}.count (issues per shift) must be an integer >= 1")
    return Shift(every, count)


SHIFT_FAULTS: dict[str, Parser] = {name: _shift for name in ("insert_between_pages", "touch_between_pages",
                                                              "delete_between_pages")}


class Invalid(Exception):
    """A query parameter GitHub would reject with 422 Validation Failed."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


def _choice(query: Any, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = query.get(name, default)
    if value not in allowed:
        raise Invalid(name)
    return value


def _instant(query: Any, name: str) -> float | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise Invalid(name) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _int(query: Any, name: str, default: int) -> int:
    try:
        return int(query.get(name, default))
    except ValueError:
        return default


def link_header(url: str, query: Any, page: int, last: int) -> str | None:
    """GitHub's Link header for `page` of `last`, keeping every query parameter; None if one page fits all."""
    if last <= 1 and page == 1:
        return None
    items = [(k, v) for k, v in query.items() if k != "page"]

    def to(target: int) -> str:
        return f'<{url}?{urlencode(items + [("page", str(target))])}>'
    parts = []
    if page > 1:
        parts.append(f'{to(page - 1)}; rel="prev"')
    if page < last:
        parts += [f'{to(page + 1)}; rel="next"', f'{to(last)}; rel="last"']
    if page > 1:
        parts.append(f'{to(1)}; rel="first"')
    return ", ".join(parts)


class GitHub:
    """The GitHub routes over one generated organisation; rendered pages are cached until data changes."""

    def __init__(self, emulator: Emulator, org: Organisation) -> None:
        self.emulator = emulator
        self.org = org
        self.render = Renderer(emulator.base_url)
        self._pages: OrderedDict[tuple, tuple[bytes, str, str | None]] = OrderedDict()

    def install(self) -> None:
        em = self.emulator
        repo = "/repos/{owner}/{repo}"
        for path, route in (("/orgs/{org}/repos", self.org_repos), (repo, self.repo),
                            (f"{repo}/issues", self.issues), (f"{repo}/issues/comments", self.comments),
                            (f"{repo}/pulls", self.pulls), (f"{repo}/commits", self.commits)):
            em.api_route("GET", path, self._validated(route))
        em.api_route("GET", "/rate_limit", self.rate_limit, counted=False)
        em.admin_route("POST", "/_emulator/github/touch", self.touch)
        em.admin_route("POST", "/_emulator/github/insert", self.insert)
        em.admin_route("POST", "/_emulator/github/delete", self.delete)
        em.admin_route("GET", "/_emulator/github/truth", self.truth)

    def _validated(self, route: Callable[[web.Request], Any]) -> Callable[[web.Request], Any]:
        async def answer(request: web.Request) -> Reply:
            try:
                return await route(request)
            except Invalid as exc:
                return json_reply({"message": "Validation Failed", "errors": [
                    {"resource": "Issue", "field": exc.field, "code": "invalid"}], "documentation_url": _DOCS}, 422,
                    note="invalid-parameter")
        return answer

    def _repo(self, request: web.Request) -> Repo | None:
        return self.org.repo(request.match_info["owner"], request.match_info["repo"])

    def _page(self, request: web.Request, version: object, selection: Callable[[], np.ndarray | list[Any]], *,
              descending: bool, render: Callable[[Any], str]) -> Reply:
        """One page of `selection()` (ascending order, reversed when `descending`), cached per data version."""
        key = (request.path, request.query_string, version)
        hit = self._pages.get(key)
        if hit is None:
            query = request.query
            per_page = min(100, max(1, _int(query, "per_page", 30)))
            page = max(1, _int(query, "page", 1))
            chosen = selection()
            start = (page - 1) * per_page
            rows = (chosen[::-1] if descending else chosen)[start:start + per_page]
            body = render(rows).encode()
            last = max(1, math.ceil(len(chosen) / per_page))
            hit = (body, '"' + hashlib.md5(body).hexdigest() + '"',
                   link_header(self.emulator.base_url + request.path, query, page, last))
            self._pages[key] = hit
            if len(self._pages) > PAGE_CACHE:
                self._pages.popitem(last=False)
        body, etag, link = hit
        return Reply(200, body, {"Link": link} if link else {}, etag=etag)

    # -- API routes --------------------------------------------------------------------------------------

    async def org_repos(self, request: web.Request) -> Reply:
        """`type` is accepted and ignored (every repository is public); `sort` and `direction` are honoured."""
        if request.match_info["org"].lower() != self.org.name.lower():
            return self.emulator.error(404, "not-found")
        sort = _choice(request.query, "sort", ("created", "updated", "pushed", "full_name"), "created")
        direction = _choice(request.query, "direction", ("asc", "desc"), "asc" if sort == "full_name" else "desc")
        field = {"created": "created_at", "updated": "updated_at", "pushed": "pushed_at"}.get(sort, "full_name")

        def selection() -> list[dict[str, Any]]:
            return sorted((self.render.repo(r) for r in self.org.repos.values()), key=lambda r: (r[field], r["id"]))
        version = tuple(r.issues.version for r in self.org.repos.values())
        return self._page(request, version, selection, descending=direction == "desc",
                          render=lambda rows: json.dumps(list(rows), separators=(",", ":")))

    async def repo(self, request: web.Request) -> Reply:
        repo = self._repo(request)
        return json_reply(self.render.repo(repo)) if repo else self.emulator.error(404, "not-found")

    async def issues(self, request: web.Request) -> Reply:
        """`state`, `sort` (comments sorts as created), `direction`, `since` (updated_at >= since)."""
        repo = self._repo(request)
        if repo is None:
            return self.emulator.error(404, "not-found")
        q = request.query
        state = _choice(q, "state", ("open", "closed", "all"), "open")
        sort = _choice(q, "sort", ("created", "updated", "comments"), "created")
        sort = "updated" if sort == "updated" else "created"  # comments: sorted as created
        descending = _choice(q, "direction", ("asc", "desc"), "desc") == "desc"
        since = _instant(q, "since")
        table = repo.issues

        def selection() -> np.ndarray:
            return table.select(pulls=False, state=state, sort=sort,
                                since=None if since is None else math.ceil(since))
        note = self._shift_pages(repo, selection, descending)
        reply = self._page(request, table.version, selection, descending=descending,
                           render=lambda numbers: self.render.issues(repo, table.rows(numbers)))
        reply.note = note
        return reply

    def _shift_pages(self, repo: Repo, selection: Callable[[], np.ndarray], descending: bool) -> str | None:
        faults, now, notes = self.emulator.faults, int(time.time()), []
        insert: Shift | None = faults.get("insert_between_pages")
        if insert is not None and insert.every.due():
            repo.issues.insert(insert.count, now)
            notes.append("inserted")
        for name, note, action in (("touch_between_pages", "touched", lambda ns: repo.issues.touch(ns, now)),
                                   ("delete_between_pages", "deleted", repo.issues.delete)):
            shift: Shift | None = faults.get(name)
            if shift is not None and shift.every.due():
                chosen = selection()
                action((chosen[::-1] if descending else chosen)[: shift.count].tolist())
                notes.append(note)
        return ",".join(notes) or None

    async def pulls(self, request: web.Request) -> Reply:
        """`state`, `sort` (popularity and long-running sort as created), `direction`; no `since`."""
        repo = self._repo(request)
        if repo is None:
            return self.emulator.error(404, "not-found")
        q = request.query
        state = _choice(q, "state", ("open", "closed", "all"), "open")
        sort = _choice(q, "sort", ("created", "updated", "popularity", "long-running"), "created")
        direction = _choice(q, "direction", ("asc", "desc"), "desc" if sort == "created" else "asc")
        table = repo.issues
        return self._page(request, table.version,
                          lambda: table.select(pulls=True, state=state, sort="updated" if sort == "updated" else
                                               "created", since=None),
                          descending=direction == "desc",
                          render=lambda numbers: self.render.pulls(repo, table.rows(numbers)))

    async def comments(self, request: web.Request) -> Reply:
        """`sort` (created, updated), `direction` (only with `sort`), `since` (updated_at >= since)."""
        repo = self._repo(request)
        if repo is None:
            return self.emulator.error(404, "not-found")
        q = request.query
        sort = _choice(q, "sort", ("created", "updated"), "created")
        descending = "sort" in q and _choice(q, "direction", ("asc", "desc"), "desc") == "desc"
        since = _instant(q, "since")
        table = repo.comments()
        return self._page(request, repo.issues.version,
                          lambda: table.select(sort=sort, since=None if since is None else math.ceil(since)),
                          descending=descending, render=lambda rows: self.render.comments(repo, table.rows(rows)))

    async def commits(self, request: web.Request) -> Reply:
        """Newest first; `since` / `until` bound `commit.author.date`; `sha`, `path`, `author` are ignored."""
        repo = self._repo(request)
        if repo is None:
            return self.emulator.error(404, "not-found")
        since, until = _instant(request.query, "since"), _instant(request.query, "until")
        dates = repo.commit_dates()

        def selection() -> np.ndarray:
            lo = 0 if since is None else int(np.searchsorted(dates, math.ceil(since), "left"))
            hi = len(dates) if until is None else int(np.searchsorted(dates, math.floor(until), "right"))
            return np.arange(lo, max(lo, hi))
        return self._page(request, 0, selection, descending=True,
                          render=lambda pos: self.render.commits(repo, list(zip((pos + 1).tolist(),
                                                                                dates[pos].tolist()))))

    async def rate_limit(self, request: web.Request) -> Reply:
        token = request.headers.get("Authorization", "").partition(" ")[2].strip()
        headers = self.emulator.limits.headers(credential_id(token), time.time())
        core: dict[str, Any] = {k: int(headers[f"x-ratelimit-{k}"]) for k in ("limit", "remaining", "used", "reset")}
        core["resource"] = "core"
        return json_reply({"resources": {"core": core}, "rate": core})

    # -- admin routes ------------------------------------------------------------------------------------

    def _admin_repo(self, name: Any) -> Repo:
        owner, _, repo_name = str(name).partition("/")
        repo = self.org.repo(owner, repo_name)
        if repo is None:
            raise ValueError(f"unknown repo {name!r}; known: {sorted(self.org.repos)}")
        return repo

    async def touch(self, request: web.Request) -> Any:
        body = await request.json()
        now = int(time.time())
        numbers = [int(n) for n in body.get("numbers", [])]
        self._admin_repo(body.get("repo")).issues.touch(numbers, now)
        return {"touched": len(numbers), "updated_at": iso(now)}

    async def insert(self, request: web.Request) -> Any:
        body = await request.json()
        count = int(body.get("count", 1))
        if count < 1:
            raise ValueError("count must be >= 1")
        return {"numbers": self._admin_repo(body.get("repo")).issues.insert(count, int(time.time()))}

    async def delete(self, request: web.Request) -> Any:
        body = await request.json()
        numbers = [int(n) for n in body.get("numbers", [])]
        self._admin_repo(body.get("repo")).issues.delete(numbers)
        return {"deleted": len(numbers)}

    async def truth(self, request: web.Request) -> Any:
        """Every current issue (PRs included) of `repo` in number order, as parallel columns."""
        repo = self._admin_repo(request.query.get("repo"))
        state = request.query.get("state", "all")
        if state not in ("open", "closed", "all"):
            raise ValueError("state must be open, closed or all")
        table = repo.issues
        numbers = table.select(pulls=False, state=state, sort="created", since=None)
        idx = numbers - 1
        return {"repo": repo.full_name, "state": state, "count": len(numbers), "numbers": numbers.tolist(),
                "ids": ((repo.index + 1) * ISSUE_IDS + numbers).tolist(),
                "updated_at": [iso(t) for t in table.updated[idx].tolist()],
                "states": ["closed" if c else "open" for c in table.closed[idx].tolist()],
                "pull_request": table.is_pr[idx].tolist()}


def _arguments(parser: argparse.ArgumentParser) -> None:
    def org_name(value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", value):
            raise argparse.ArgumentTypeError("an organisation name is letters, digits and hyphens")
        return value
    parser.add_argument("--org", type=org_name, default="acme")
    parser.add_argument("--repos", type=int, default=3)
    parser.add_argument("--issues-per-repo", type=int, default=1000)
    parser.add_argument("--commits-per-repo", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)


def _install(args: argparse.Namespace, base_url: str) -> Emulator:
    emulator = Emulator(base_url=base_url, oauth=oauth_config(args, base_url), static_tokens=args.token,
                        extra_faults=SHIFT_FAULTS, require_user_agent=True, log_limit=args.log_limit)
    org = Organisation.generate(name=args.org, seed=args.seed, repos=args.repos,
                                issues_per_repo=args.issues_per_repo, commits_per_repo=args.commits_per_repo)
    GitHub(emulator, org).install()
    return emulator


def serve() -> None:
    """`python -m tests.emulators.github`: run the emulator with the command line's options."""
    run("github", add_arguments=_arguments, install=_install)
