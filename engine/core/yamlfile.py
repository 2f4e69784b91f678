"""YAML files a person writes (specs, pipelines, gold definitions): parsed keeping positions, so every
problem is reported with its line, column and field path.

Such text also arrives from agents (MCP) and API callers, so parsing is bounded before anything is built:
at most `MAX_BYTES` (1 MiB), collections nested at most `MAX_DEPTH` (64) deep, and no anchors or aliases
(`&name`, `*name`): an alias is a reference that expands on use, and a few hundred bytes of them expand to
gigabytes ("billion laughs"). Each refusal is a `SpecError` at its line, never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.composer import Composer
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent

from engine.core.errors import SpecError
from engine.core.spec import NAME_PATTERN


@dataclass(frozen=True)
class SpecIssue:
    """One problem in a spec file: where it is and what is wrong."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}:{self.column}: {where}{self.message}"


MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64


class _Refused(MarkedYAMLError):
    """A limit of this module, at the place in the text where it was crossed."""


def _refuse(mark: Any, problem: str) -> _Refused:
    return _Refused(None, None, problem, mark)


class _BoundedComposer(Composer):  # type: ignore[misc]  # ruamel ships no type stubs for this class
    """ruamel's composer refusing aliases and anchors and counting depth as it descends: both are checked
    before the node is built, so nothing has been expanded when it refuses."""

    _nesting = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.parser.peek_event()
        if isinstance(event, AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _refuse(event.start_mark, "anchors and aliases (&name, *name) are not allowed here: "
                                            "write each value out in full")
        if self._nesting >= MAX_DEPTH:
            raise _refuse(event.start_mark, f"nested more than {MAX_DEPTH} levels deep")
        self._nesting += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._nesting -= 1


def _bounded_scanner(base: type) -> type:
    """`base` refusing flow collections (`[`, `{`) nested past MAX_DEPTH as it reads them: the scanner's
    own cost grows with the square of that depth, so the composer's check would come too late."""

    class BoundedScanner(base):  # type: ignore[valid-type, misc]
        def fetch_flow_collection_start(self, *args: Any, **kwargs: Any) -> None:
            if self.flow_level >= MAX_DEPTH:
                raise _refuse(self.reader.get_mark(), f"nested more than {MAX_DEPTH} levels deep")
            super().fetch_flow_collection_start(*args, **kwargs)

    return BoundedScanner


_SCANNER = _bounded_scanner(YAML(typ="rt").Scanner)


def bounded_yaml() -> YAML:
    """A round-trip YAML loader with this module's limits on depth, anchors and aliases (size is the
    caller's: `read_mapping` checks it)."""
    yaml = YAML(typ="rt")
    yaml.Composer = _BoundedComposer
    yaml.Scanner = _SCANNER
    return yaml


def too_large(size: int, filename: str) -> SpecError:
    """The error for a text of `size` bytes past MAX_BYTES."""
    issue = SpecIssue(filename, 1, 1, "", f"the text is {size:,} bytes or more; specs and pipelines may be at most "
                                          f"{MAX_BYTES // 1024 // 1024} MiB ({MAX_BYTES:,} bytes)")
    return SpecError(str(issue), issues=[issue])


def read_text(path: Path) -> str:
    """The text of the YAML file at `path`; raise `SpecError` when it is missing, past MAX_BYTES (checked
    before reading) or not UTF-8."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise too_large(size, str(path))
        return path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise SpecError(f"{path}: no such file", issues=[]) from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})", issues=[]) from None


def read_mapping(text: str, filename: str, not_a_mapping: str) -> CommentedMap:
    """Load YAML `text` keeping positions, within the module's limits; raise `SpecError` at the line and
    column of a syntax error or a limit crossed, or with `not_a_mapping` when the document is not a mapping."""
    # Every character is at least one byte: a long text is refused before it is encoded.
    size = len(text) if len(text) > MAX_BYTES else len(text.encode("utf-8", errors="replace"))
    if size > MAX_BYTES:
        raise too_large(size, filename)
    try:
        data = bounded_yaml().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        message = problem if isinstance(exc, _Refused) else f"invalid YAML: {problem}"
        issue = SpecIssue(filename, line, col, "", message)
        raise SpecError(str(issue), issues=[issue]) from None
    except (YAMLError, RecursionError) as exc:  # no position: a reader error (a control character) and the like
        issue = SpecIssue(filename, 1, 1, "", f"invalid YAML: {exc}".splitlines()[0])
        raise SpecError(str(issue), issues=[issue]) from None
    if not isinstance(data, CommentedMap):
        issue = SpecIssue(filename, 1, 1, "", not_a_mapping)
        raise SpecError(str(issue), issues=[issue])
    return data


def plain_yaml(node: Any) -> Any:
    """Return ruamel's round-trip nodes as plain dicts and lists (what pydantic validates)."""
    if isinstance(node, CommentedMap):
        return {str(k): plain_yaml(v) for k, v in node.items()}
    if isinstance(node, CommentedSeq):
        return [plain_yaml(v) for v in node]
    return node


def validation_issues(filename: str, data: CommentedMap, exc: ValidationError) -> list[SpecIssue]:
    """Return pydantic's errors for `data` as issues at their places in the file, in file order."""
    return sorted((_issue(filename, data, err) for err in exc.errors(include_url=False)),
                  key=lambda i: (i.line, i.column))


def position(data: CommentedMap, found: tuple[Any, ...], *, key_only: bool = False) -> tuple[int, int]:
    """Return the 1-based (line, column) of the value at the path `found`, or of its key."""
    return _position(data, found, key_only=key_only)


def _issue(filename: str, data: CommentedMap, err: Any) -> SpecIssue:
    loc = tuple(err["loc"])
    path, found = _walk(data, loc)
    line, col = _position(data, found, key_only=err["type"] in ("extra_forbidden", "missing"))
    message = err["msg"]
    if err["type"] == "extra_forbidden":
        message = "unknown field (check the spelling; `ipai spec schema` lists the fields)"
    elif err["type"] == "missing":
        message = "required field is missing"
    elif err["type"] == "model_type" and "SecretRef" in message:
        message = ("secrets are references, never values: write {secret: NAME} "
                   "naming a secret kept in the Vault")
    elif err["type"] == "string_pattern_mismatch" and NAME_PATTERN in message:
        message = f"{err['input']!r} is not a valid name: use lower case letters, digits and _, starting with a letter"
    return SpecIssue(filename, line, col, path, message)


def _walk(data: Any, loc: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
    """Follow a pydantic error location through the YAML tree; return its display path and the
    part of it that exists in the file (union tags in `loc` are skipped)."""
    node: Any = data
    found: list[Any] = []
    parts: list[str] = []
    for i, step in enumerate(loc):
        if isinstance(node, CommentedMap) and step in node:
            node = node[step]
            found.append(step)
            parts.append(f".{step}" if parts else str(step))
        elif isinstance(node, CommentedSeq) and isinstance(step, int) and 0 <= step < len(node):
            node = node[step]
            found.append(step)
            parts.append(f"[{step}]")
        elif i == len(loc) - 1 and isinstance(step, str) and not step.startswith(("function-", "tagged-")):
            parts.append(f".{step}" if parts else step)  # a missing field: name it, point at its parent
    return "".join(parts), tuple(found)


def _position(data: CommentedMap, found: tuple[Any, ...], *, key_only: bool = False) -> tuple[int, int]:
    """Return the 1-based (line, column) of the value at `found`, or of its key."""
    node: Any = data
    line, col = 0, 0
    for step in found:
        if isinstance(node, CommentedMap):
            pos = node.lc.key(step) if key_only or not _is_scalar(node[step]) else node.lc.value(step)
        else:
            pos = node.lc.item(step)
        line, col = pos
        node = node[step]
    if not found and hasattr(data, "lc"):
        line, col = data.lc.line, data.lc.col
    return line + 1, col + 1


def _is_scalar(node: Any) -> bool:
    return not isinstance(node, (CommentedMap, CommentedSeq))
