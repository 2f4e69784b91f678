"""YAML files a person writes (specs, pipelines, gold definitions): parsed keeping positions, so every
problem is reported with its line, column and field path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

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


def read_mapping(text: str, filename: str, not_a_mapping: str) -> CommentedMap:
    """Load YAML `text` keeping positions; raise `SpecError` at the syntax error's line and column, or with
    `not_a_mapping` when the document is not a mapping."""
    try:
        data = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        issue = SpecIssue(filename, line, col, "", f"invalid YAML: {problem}")
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
