"""Render GitHub records as JSON text from the rows `github_data` produces.

Records are filled into fixed templates with `%` formatting rather than built as dicts and dumped: every
string that goes in comes from the word lists below or from numbers, so it needs no escaping, and a page of
100 issues renders in well under a millisecond. Cosmetic fields (title, author, labels, body) are picked by
bits of the row's hash that the data columns do not use, so they are as deterministic as the rest.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import time
from typing import Any

from tests.emulators.github.data import Repo

_VERBS = ("Fix", "Improve", "Add", "Remove", "Refactor", "Document", "Test", "Speed up")
_THINGS = ("crash", "timeout", "memory leak", "race condition", "retry logic", "pagination", "error message",
           "config parsing")
_PLACES = ("in the parser", "in the scheduler", "when the token expires", "on empty input", "for large files",
           "in the CLI", "behind a proxy", "after an upgrade")
TITLES = tuple(f"{v} {t} {p}" for v in _VERBS for t in _THINGS for p in _PLACES)

LOGINS = tuple(f"{a}-{b}" for a in ("brisk", "calm", "dusty", "eager", "fuzzy", "lucky")
               for b in ("otter", "heron", "lynx", "panda", "yak", "finch"))
USERS = tuple('{"login":"%s","id":%d}' % (login, 5000 + i)
              for i, login in enumerate(LOGINS))

_LABELS = {"bug": 208045946, "enhancement": 208045947, "documentation": 208045948, "good first issue": 208045949,
           "help wanted": 208045950, "question": 208045951}
_LABEL_SETS = ((), (), ("bug",), ("enhancement",), ("documentation",), ("good first issue",), ("help wanted",),
               ("question",), ("bug", "help wanted"), ("enhancement", "good first issue"), ("bug", "question"),
               ("documentation", "good first issue"), ("bug",), ("enhancement",), (), ("bug", "enhancement"))
LABEL_SETS = tuple(",".join('{"id":%d,"name":"%s"}' % (_LABELS[n], n) for n in names) for names in _LABEL_SETS)

BODIES = ("Steps to reproduce are in the linked log.",
          "Seen on the nightly build; happens about once a day.",
          "This blocks the release. See the discussion in the team channel.",
          "Works on my machine, fails in CI with the default settings.",
          "Proposal: make this configurable and document the default.",
          "Regression since the last minor release.",
          "Reported by a customer; attaching the anonymised trace below.",
          "Low priority, but it confuses new contributors.")

N_TITLES, N_USERS, N_LABEL_SETS, N_BODIES = len(TITLES), len(USERS), len(LABEL_SETS), len(BODIES)
STATES = ("open", "closed")  # indexed by the `closed` column

ISSUE = ('{"repository_url":"%s","id":%d,"node_id":"%s","number":%d,"title":"%s","user":%s,"labels":[%s],'
         '"state":"%s","comments":%d,"created_at":"%s","updated_at":"%s","closed_at":%s,"body":"%s"%s}')
ISSUE_PR = ',"pull_request":{"url":"%s/pulls/%d","merged_at":%s}'
PULL = ('{"url":"%s/pulls/%d","id":%d,"node_id":"%s","number":%d,"state":"%s","locked":false,"title":"%s",'
        '"user":%s,"body":"%s","created_at":"%s","updated_at":"%s","closed_at":%s,"merged_at":%s,"draft":%s,'
        '"head":{"label":"%s:issue-%d","ref":"issue-%d","sha":"%s","repo":%s},'
        '"base":{"label":"%s:main","ref":"main","sha":"%s","repo":%s},"author_association":"MEMBER"}')
COMMENT = ('{"url":"%s/issues/comments/%d","html_url":"https://github.com/%s/issues/%d#issuecomment-%d",'
           '"issue_url":"%s/issues/%d","id":%d,"node_id":"%s","user":%s,"created_at":"%s","updated_at":"%s",'
           '"author_association":"MEMBER","body":"%s"}')
COMMIT = ('{"sha":"%s","node_id":"%s","commit":{"author":{"name":"%s","email":"%s@users.example","date":"%s"},'
          '"committer":{"name":"%s","email":"%s@users.example","date":"%s"},"message":"%s","tree":{"sha":"%s"},'
          '"comment_count":0},"url":"%s/commits/%s","html_url":"https://github.com/%s/commit/%s",'
          '"author":%s,"committer":%s,"parents":[%s]}')

ISSUE_IDS = 10**10  # repo i's issue ids are (i+1)*ISSUE_IDS + number
PULL_ID_OFFSET = 3 * 10**9
COMMENT_ID_OFFSET = 6 * 10**9


@functools.lru_cache(maxsize=1 << 16)
def iso(t: int) -> str:
    """Epoch seconds as GitHub writes timestamps: ISO 8601, UTC, second precision, `Z`."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _iso_or_null(t: int | None) -> str:
    return "null" if t is None else '"' + iso(t) + '"'


def _node_id(kind: str, ident: int | str) -> str:
    return base64.b64encode(f"{kind}{ident}".encode()).decode()


def _sha(*parts: object) -> str:
    return hashlib.sha1(":".join(map(str, parts)).encode()).hexdigest()


class Renderer:
    """Turns rows into JSON arrays for one emulator; links point at the emulator's own base URL."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def api_url(self, repo: Repo) -> str:
        return f"{self.base_url}/repos/{repo.full_name}"

    def issues(self, repo: Repo, rows: list[tuple[int, ...]]) -> str:
        url = self.api_url(repo)
        base_id = (repo.index + 1) * ISSUE_IDS
        out = []
        for n, h, created, updated, closed, is_pr, merged, comments in rows:
            ident = base_id + n
            closed_at = _iso_or_null(updated if closed else None)
            pr = ISSUE_PR % (url, n, closed_at if merged else "null") if is_pr else ""
            out.append(ISSUE % (url, ident, _node_id("05:Issue", ident), n, TITLES[(h >> 40) % N_TITLES],
                                USERS[(h >> 48) % N_USERS], LABEL_SETS[(h >> 56) % N_LABEL_SETS], STATES[closed],
                                comments, iso(created), iso(updated), closed_at, BODIES[(h >> 44) % N_BODIES], pr))
        return "[" + ",".join(out) + "]"

    def _repo_ref(self, repo: Repo) -> str:
        return '{"id":%d,"name":"%s","full_name":"%s","url":"%s"}' % (repo.id, repo.name, repo.full_name,
                                                                      self.api_url(repo))

    def pulls(self, repo: Repo, rows: list[tuple[int, ...]]) -> str:
        url, ref, org = self.api_url(repo), self._repo_ref(repo), repo.org
        base_sha = self.commit_sha(repo, repo.commit_count)
        base_id = (repo.index + 1) * ISSUE_IDS + PULL_ID_OFFSET
        out = []
        for n, h, created, updated, closed, _, merged, _ in rows:
            ident = base_id + n
            closed_at = _iso_or_null(updated if closed else None)
            draft = "true" if not closed and (h >> 60) % 4 == 0 else "false"
            out.append(PULL % (url, n, ident, _node_id("011:PullRequest", ident), n, STATES[closed],
                               TITLES[(h >> 40) % N_TITLES], USERS[(h >> 48) % N_USERS], BODIES[(h >> 44) % N_BODIES],
                               iso(created), iso(updated), closed_at, closed_at if merged else "null", draft, org, n,
                               n, _sha(repo.issues.salt, "head", n), ref, org, base_sha, ref))
        return "[" + ",".join(out) + "]"

    def comments(self, repo: Repo, rows: list[tuple[int, ...]]) -> str:
        url, full = self.api_url(repo), repo.full_name
        base_id = (repo.index + 1) * ISSUE_IDS + COMMENT_ID_OFFSET
        out = []
        for position, parent, h, created, updated in rows:
            ident = base_id + position + 1
            out.append(COMMENT % (url, ident, full, parent, ident, url, parent, ident,
                                  _node_id("012:IssueComment", ident), USERS[(h >> 48) % N_USERS], iso(created),
                                  iso(updated), BODIES[(h >> 44) % N_BODIES]))
        return "[" + ",".join(out) + "]"

    def commit_sha(self, repo: Repo, k: int) -> str:
        return _sha(repo.issues.salt, "commit", k)

    def commits(self, repo: Repo, rows: list[tuple[int, int]]) -> str:
        """Render (k, author date) rows; commit k's parent is commit k-1."""
        url, full = self.api_url(repo), repo.full_name
        out = []
        for k, date in rows:
            sha = self.commit_sha(repo, k)
            login = LOGINS[k % N_USERS]
            name = login.replace("-", " ").title()
            user = "null" if k % 10 == 0 else USERS[k % N_USERS]  # some commits have no GitHub account
            parent = '{"sha":"%s"}' % self.commit_sha(repo, k - 1) if k > 1 else ""
            out.append(COMMIT % (sha, _node_id("06:Commit", sha), name, login, iso(date), name, login,
                                 iso(date + 60), TITLES[mix_small(k) % N_TITLES], _sha(sha, "tree"), url, sha, full,
                                 sha, user, user, parent))
        return "[" + ",".join(out) + "]"

    def repo(self, repo: Repo) -> dict[str, Any]:
        issues = repo.issues.ensure()
        alive = ~issues.deleted
        url = self.api_url(repo)
        return {
            "id": repo.id, "node_id": _node_id("010:Repository", repo.id), "name": repo.name,
            "full_name": repo.full_name, "private": False,
            "owner": {"login": repo.org, "id": 9000, "type": "Organization"},
            "html_url": f"https://github.com/{repo.full_name}", "description": f"Emulated repository {repo.name}",
            "fork": False, "url": url, "issues_url": f"{url}/issues{{/number}}",
            "pulls_url": f"{url}/pulls{{/number}}", "commits_url": f"{url}/commits{{/sha}}",
            "created_at": iso(1514764800 + repo.index * 86400), "updated_at": iso(int(issues.updated[alive].max(
                initial=1514764800))), "pushed_at": iso(int(repo.commit_dates()[-1]) if repo.commit_count else
                                                     1514764800),
            "default_branch": "main", "visibility": "public", "archived": False, "disabled": False,
            "open_issues_count": int((alive & ~issues.closed).sum()),
        }


def mix_small(k: int) -> int:
    """A cheap, deterministic scramble for picking words (not for data columns)."""
    return (k * 2654435761) >> 7
