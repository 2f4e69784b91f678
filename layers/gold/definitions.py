"""Gold view definitions on disk: a SELECT and the YAML documenting it, loaded, checked and ordered.

A view is two files side by side in a folder (`layers/gold/views/` ships the examples):

    gold_<domain>_<entity>.sql    the SELECT that defines the view (one statement; no CREATE VIEW)
    gold_<domain>_<entity>.yaml   what the view is and what every column means:

        description: Pull requests opened and merged per repository and week.
        columns:
          - name: repo
            description: The repository, as owner/name.

A pair that cannot be loaded (a bad name, a missing or invalid YAML) is a `GoldFailure` naming the file
and line, never an exception: the other views still load. layers/gold/apply.py applies them to Postgres.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from engine.core.errors import ConfigError, IpaiError
from engine.core.yamlfile import bounded_yaml, plain_yaml

GOLD_SCHEMA = "gold"
SILVER_SCHEMA = "silver"
DEFAULT_DIRECTORY = Path(__file__).resolve().parent / "views"
VIEW_NAME = re.compile(r"^gold_[a-z][a-z0-9]*_[a-z0-9_]*[a-z0-9]$")
_REFERENCE = re.compile(r'(?<![\w$."])(silver|gold)\s*\.\s*("(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)', re.IGNORECASE)
_COMMENTS_AND_STRINGS = re.compile(r"--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'", re.DOTALL)


class ColumnDoc(BaseModel):
    """One documented column."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    description: str = Field(min_length=1)


class ViewDoc(BaseModel):
    """The YAML beside a view's SQL."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    description: str = Field(min_length=1)
    source_type: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_]*$")
    """The connector the view is defined for: its `silver.<stream>` is that stream of every instance of this
    source type in the tenant and env, side by side with an `instance` column (layers/gold/scope.py)."""
    columns: tuple[ColumnDoc, ...] = Field(min_length=1)


@dataclass(frozen=True)
class GoldView:
    """A gold view as defined on disk."""

    name: str
    sql_path: Path
    yaml_path: Path
    query: str
    """The SQL file's text without its trailing `;`: line N of the file is line N of the query."""
    doc: ViewDoc
    column_lines: dict[str, int] = field(default_factory=dict, compare=False)
    """The YAML line documenting each column."""

    @property
    def reads(self) -> frozenset[tuple[str, str]]:
        """The silver and gold relations the query names, as (schema, name)."""
        return references(self.query)


@dataclass(frozen=True)
class GoldFailure:
    """A view that was not applied: where the problem is and Postgres' (or our) message."""

    view: str
    file: Path
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = "".join(f":{n}" for n in (self.line, self.column) if n is not None)
        return f"{self.file}{where}: {self.message}"


class ViewFailed(IpaiError):
    """Raised with the failure of one view; whoever handles a batch of views records it and goes on."""

    def __init__(self, failure: GoldFailure) -> None:
        super().__init__(str(failure))
        self.failure = failure


# -- loading ----------------------------------------------------------------------------------------------


def load_gold(directory: Path = DEFAULT_DIRECTORY) -> tuple[list[GoldView], list[GoldFailure]]:
    """Read every view in `directory`; return the valid ones and a failure for each one that is not."""
    if not directory.is_dir():
        raise ConfigError(f"{directory}: no such folder of gold views (give --dir, e.g. layers/gold/views)")
    views: list[GoldView] = []
    failures: list[GoldFailure] = []
    sql_files = {p.stem: p for p in sorted(directory.glob("*.sql"))}
    for yaml_path in sorted(directory.glob("*.yaml")):
        stem = yaml_path.stem
        if stem not in sql_files:
            failures.append(GoldFailure(stem, yaml_path, f"documents a view that has no SQL file {stem}.sql"))
    for name, sql_path in sql_files.items():
        try:
            views.append(_load_view(name, sql_path))
        except ViewFailed as exc:
            failures.append(exc.failure)
    return views, failures


def _load_view(name: str, sql_path: Path) -> GoldView:
    if not VIEW_NAME.match(name):
        raise ViewFailed(GoldFailure(name, sql_path, "a gold view is named gold_<domain>_<entity> (lower case "
                                                      "letters, digits and _); rename the file and its YAML"))
    yaml_path = sql_path.with_suffix(".yaml")
    if not yaml_path.exists():
        raise ViewFailed(GoldFailure(name, yaml_path, "missing: every gold view has a YAML file beside its SQL "
                                                       "describing the view and each of its columns"))
    query = sql_path.read_text(encoding="utf-8").rstrip()
    query = query[:-1].rstrip() if query.endswith(";") else query
    if not _COMMENTS_AND_STRINGS.sub("", query).strip():
        raise ViewFailed(GoldFailure(name, sql_path, "empty: write the SELECT that defines the view"))
    doc, lines = _load_doc(name, yaml_path)
    return GoldView(name, sql_path, yaml_path, query, doc, lines)


def _load_doc(name: str, path: Path) -> tuple[ViewDoc, dict[str, int]]:
    try:
        data = bounded_yaml().load(path.read_text(encoding="utf-8"))  # no aliases, 64 levels at most
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ViewFailed(GoldFailure(name, path, f"invalid YAML: {getattr(exc, 'problem', exc)}",
                                      mark.line + 1 if mark else None)) from None
    try:
        doc = ViewDoc.model_validate(plain_yaml(data))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ViewFailed(GoldFailure(name, path, f"{where}: {first['msg']} (a view's YAML has `description` "
                                                  "and `columns`, each column a `name` and a `description`)",
                                      _line_of(data, first["loc"]))) from None
    lines = {}
    for i, col in enumerate(doc.columns):
        line = _line_of(data, ("columns", i)) or 0
        if col.name in lines:
            raise ViewFailed(GoldFailure(name, path, f"column {col.name!r} is documented twice", line))
        lines[col.name] = line
    return doc, lines


def _line_of(data: Any, loc: Sequence[Any]) -> int | None:
    """The 1-based YAML line of the deepest node of `loc` that exists."""
    line, node = None, data
    for step in loc:
        if isinstance(node, CommentedMap) and step in node:
            line = node.lc.key(step)[0] + 1
        elif isinstance(node, CommentedSeq) and isinstance(step, int) and 0 <= step < len(node):
            line = node.lc.item(step)[0] + 1
        else:
            break
        node = node[step]
    return line


def references(query: str) -> frozenset[tuple[str, str]]:
    """The `silver.x` and `gold.y` relations named in `query` (comments and string literals ignored)."""
    return frozenset((schema, name) for schema, name, _, _ in reference_spans(query))


def reference_spans(query: str) -> list[tuple[str, str, int, int]]:
    """(schema, name, start, end) of each `silver.x` and `gold.y` in `query`, outside comments and strings."""
    bare = blank_comments_and_strings(query)
    out = []
    for m in _REFERENCE.finditer(bare):
        schema, name = m.group(1), m.group(2)
        out.append((schema.lower(), name[1:-1].replace('""', '"') if name.startswith('"') else name.lower(),
                    m.start(), m.end()))
    return out


def blank_comments_and_strings(query: str) -> str:
    """`query` with comments and string literals replaced by spaces (lines and offsets kept)."""
    return _COMMENTS_AND_STRINGS.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), query)


def dependency_order(views: Sequence[GoldView]) -> tuple[list[GoldView], list[GoldFailure]]:
    """Order `views` so that each comes after the gold views it reads; views in a cycle fail."""
    by_name = {v.name: v for v in views}
    needs = {v.name: {n for s, n in v.reads if s == GOLD_SCHEMA and n in by_name and n != v.name} for v in views}
    ordered: list[GoldView] = []
    done: set[str] = set()
    while len(done) < len(views):
        ready = sorted(n for n, deps in needs.items() if n not in done and deps <= done)
        if not ready:
            cycle = sorted(set(by_name) - done)
            return ordered, [GoldFailure(n, by_name[n].sql_path, f"dependency cycle among gold views: "
                                                                 f"{', '.join(cycle)}") for n in cycle]
        ordered += [by_name[n] for n in ready]
        done.update(ready)
    return ordered, []
