"""Deterministic GitHub data that scales to millions of issues: columns computed from the issue number.

Nothing is generated per item at start-up. A repository's issue columns (timestamps, state, PR flag, ...) are
computed with vectorised integer hashing the first time the repository is read (about 0.2 s per million
issues), and orderings are cached until the next mutation, so a page request costs O(page), not O(n log n).

The shape of the data, chosen to exercise connectors:
- issue and PR numbers share one sequence; about one item in five is a pull request;
- `created_at` increases with the number, so `sort=created` is number order;
- issues come in blocks of `BLOCK` consecutive numbers sharing one `updated_at` second (cursor ties that
  straddle page boundaries), and blocks are updated at random times after creation, so `sort=updated`
  differs from `sort=created`;
- mutations (insert, touch, delete) stamp the wall clock, which is always later than generated data.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

T0 = 1546300800  # 2019-01-01T00:00:00Z: the first issue
SPAN = 5 * 365 * 86400  # issues are created over five years
UPDATE_WINDOW = 180 * 86400  # a block is last updated within 180 days of its creation...
T_END = T0 + SPAN + 30 * 86400  # ...and before this, so generated times are all in the past
BLOCK = 7
MAX_JITTER = 10 * 86400
SELECTION_CACHE = 16

_M64 = (1 << 64) - 1


def mix(x: np.ndarray) -> np.ndarray:
    """Scramble uint64 values (the splitmix64 finaliser): cheap, vectorised and well spread."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def mix1(x: int) -> int:
    """`mix` for one Python int."""
    z = (x + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _bits(h: np.ndarray, shift: int, modulus: int) -> np.ndarray:
    return ((h >> np.uint64(shift)) % np.uint64(modulus)).astype(np.int64)


def ordered(updated: np.ndarray, keep: np.ndarray, *, by_updated: np.ndarray | None, since: int | None) -> np.ndarray:
    """Positions of rows with `keep` (and `updated >= since`), ascending by position or by `by_updated`.

    `by_updated` is the stable argsort of `updated`: ties stay in position order.
    """
    if by_updated is None:
        if since is not None:
            keep = keep & (updated >= since)
        return np.flatnonzero(keep)
    kept = keep[by_updated]
    if since is not None:
        kept &= updated[by_updated] >= since
    return by_updated[kept]


class IssueTable:
    """The issues (PRs included) of one repository, as columns indexed by `number - 1`."""

    def __init__(self, salt: int, count: int) -> None:
        self.salt = salt
        self.initial = count
        self.version = 0
        self._built = False
        self._selections: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._by_updated: np.ndarray | None = None

    def _build(self) -> None:
        count = self.initial
        n = np.arange(1, count + 1, dtype=np.uint64)
        h = mix(n + np.uint64(self.salt))
        step = max(1, SPAN // max(count, 1))
        created = T0 + n.astype(np.int64) * step + _bits(h, 32, max(1, min(step // 2, MAX_JITTER)))
        last = np.minimum(((n.astype(np.int64) - 1) // BLOCK + 1) * BLOCK, count)
        created_last = created[last - 1]
        room = np.clip(T_END - created_last, 0, UPDATE_WINDOW)
        block_hash = mix((n - np.uint64(1)) // np.uint64(BLOCK) + np.uint64(self.salt ^ 0x5BD1E995))
        self.h = h
        self.created = created
        self.updated = created_last + (block_hash % (room + 1).astype(np.uint64)).astype(np.int64)
        self.is_pr = _bits(h, 0, 5) == 0
        self.closed = _bits(h, 8, 100) < 55
        self.merged = self.is_pr & self.closed & (_bits(h, 16, 4) != 0)
        self.comments = _bits(h, 24, 6).astype(np.int8)
        self.deleted = np.zeros(count, dtype=bool)
        self._built = True

    def ensure(self) -> IssueTable:
        if not self._built:
            self._build()
        return self

    @property
    def count(self) -> int:
        """The highest number issued so far (deleted issues included)."""
        return len(self.ensure().created)

    def _changed(self) -> None:
        self.version += 1
        self._selections.clear()
        self._by_updated = None

    def insert(self, count: int, now: int) -> list[int]:
        """Create `count` open issues (some PRs) at `now`; return their numbers."""
        first = self.count + 1
        n = np.arange(first, first + count, dtype=np.uint64)
        h = mix(n + np.uint64(self.salt))
        stamp = np.full(count, now, dtype=np.int64)
        self.h = np.concatenate([self.h, h])
        self.created = np.concatenate([self.created, stamp])
        self.updated = np.concatenate([self.updated, stamp])
        self.is_pr = np.concatenate([self.is_pr, _bits(h, 0, 5) == 0])
        no = np.zeros(count, dtype=bool)
        self.closed = np.concatenate([self.closed, no])
        self.merged = np.concatenate([self.merged, no])
        self.comments = np.concatenate([self.comments, np.zeros(count, dtype=np.int8)])
        self.deleted = np.concatenate([self.deleted, no])
        self._changed()
        return list(range(first, first + count))

    def _index(self, numbers: list[int]) -> np.ndarray:
        idx = np.asarray(numbers, dtype=np.int64) - 1
        if idx.size and (idx.min() < 0 or idx.max() >= self.count or self.deleted[idx].any()):
            raise ValueError(f"no such issue among {numbers[:10]}... (numbers run 1..{self.count})")
        return idx

    def touch(self, numbers: list[int], now: int) -> None:
        """Set `updated_at` of these issues to `now`, moving them to the end of `sort=updated`."""
        idx = self._index(numbers)
        self.updated[idx] = now
        self._changed()

    def delete(self, numbers: list[int]) -> None:
        """Make these issues vanish, as GitHub's deleted issues do (no tombstone)."""
        idx = self._index(numbers)
        self.deleted[idx] = True
        self._changed()

    def by_updated(self) -> np.ndarray:
        if self._by_updated is None:
            self._by_updated = np.argsort(self.ensure().updated, kind="stable")
        return self._by_updated

    def select(self, *, pulls: bool, state: str, sort: str, since: int | None) -> np.ndarray:
        """Numbers of the matching issues (or only PRs), ascending by `sort`; cached until a mutation."""
        key = (pulls, state, sort, since)
        hit = self._selections.get(key)
        if hit is not None:
            self._selections.move_to_end(key)
            return hit
        self.ensure()
        keep = ~self.deleted
        if pulls:
            keep &= self.is_pr
        if state != "all":
            keep &= self.closed if state == "closed" else ~self.closed
        order = self.by_updated() if sort == "updated" else None
        numbers = ordered(self.updated, keep, by_updated=order, since=since) + 1
        self._selections[key] = numbers
        if len(self._selections) > SELECTION_CACHE:
            self._selections.popitem(last=False)
        return numbers

    def rows(self, numbers: np.ndarray) -> list[tuple[int, ...]]:
        """(number, hash, created, updated, closed, is_pr, merged, comments) for each number."""
        idx = numbers - 1
        return list(zip(numbers.tolist(), self.h[idx].tolist(), self.created[idx].tolist(),
                        self.updated[idx].tolist(), self.closed[idx].tolist(), self.is_pr[idx].tolist(),
                        self.merged[idx].tolist(), self.comments[idx].tolist()))


class CommentTable:
    """Issue comments of one repository, stored in creation order (a comment's position is its id order)."""

    def __init__(self, issues: IssueTable) -> None:
        issues.ensure()
        counts = issues.comments[: issues.initial].astype(np.int64)
        total = int(counts.sum())
        parent = np.repeat(np.arange(1, issues.initial + 1, dtype=np.int64), counts)
        k = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        h = mix(parent.astype(np.uint64) * np.uint64(16) + k.astype(np.uint64) + np.uint64(issues.salt ^ 0xC0FFEE))
        created = issues.created[parent - 1] + (k + 1) * 3600 + _bits(h, 0, 3 * 86400)
        edited = _bits(h, 32, 5) == 0
        updated = created + np.where(edited, _bits(h, 40, 20 * 86400), 0)
        order = np.argsort(created, kind="stable")
        self.issues = issues
        self.parent, self.h = parent[order], h[order]
        self.created, self.updated = created[order], updated[order]
        self._by_updated = np.argsort(self.updated, kind="stable")
        self._selections: OrderedDict[tuple, np.ndarray] = OrderedDict()

    def select(self, *, sort: str, since: int | None) -> np.ndarray:
        """Positions of comments on issues that still exist, ascending by `sort` (`created` is id order)."""
        key = (self.issues.version, sort, since)
        hit = self._selections.get(key)
        if hit is not None:
            return hit
        keep = ~self.issues.deleted[self.parent - 1]
        positions = ordered(self.updated, keep, by_updated=self._by_updated if sort == "updated" else None,
                           since=since)
        self._selections[key] = positions
        if len(self._selections) > SELECTION_CACHE:
            self._selections.popitem(last=False)
        return positions

    def rows(self, positions: np.ndarray) -> list[tuple[int, ...]]:
        """(position, parent number, hash, created, updated) for each position."""
        return list(zip(positions.tolist(), self.parent[positions].tolist(), self.h[positions].tolist(),
                        self.created[positions].tolist(), self.updated[positions].tolist()))


@dataclass
class Repo:
    """One repository of the emulated organisation, with its lazily built tables."""

    index: int
    org: str
    name: str
    issues: IssueTable
    commit_count: int
    _comments: CommentTable | None = field(default=None, repr=False)

    @property
    def full_name(self) -> str:
        return f"{self.org}/{self.name}"

    @property
    def id(self) -> int:
        return 700_000 + self.index

    def comments(self) -> CommentTable:
        if self._comments is None:
            self._comments = CommentTable(self.issues)
        return self._comments

    def commit_dates(self) -> np.ndarray:
        """Author date of commit k (1-based) at position k-1: increasing, so newest-first is k descending."""
        step = max(1, SPAN // max(self.commit_count, 1))
        k = np.arange(1, self.commit_count + 1, dtype=np.int64)
        jitter = _bits(mix(k.astype(np.uint64) + np.uint64(self.issues.salt ^ 0xC0DE)), 0,
                       max(1, min(step // 2, MAX_JITTER)))
        return T0 + k * step + jitter


@dataclass
class Organisation:
    """The emulated organisation: `repos` repositories named repo1..repoN, all derived from `seed`."""

    name: str
    seed: int
    repos: dict[str, Repo]

    @classmethod
    def generate(cls, *, name: str, seed: int, repos: int, issues_per_repo: int,
                 commits_per_repo: int) -> Organisation:
        made = {}
        for i in range(repos):
            salt = mix1(seed * 1_000_003 + i + 1) >> 8
            repo = Repo(i, name, f"repo{i + 1}", IssueTable(salt, issues_per_repo), commits_per_repo)
            made[repo.full_name] = repo
        return cls(name, seed, made)

    def repo(self, owner: str, name: str) -> Repo | None:
        return self.repos.get(f"{owner}/{name}")
