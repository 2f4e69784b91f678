"""Load a connector spec from YAML, reporting every problem with its line, column and field path."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from pydantic import TypeAdapter, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from engine.errors import SpecError
from engine.spec import NAME_PATTERN, ConnectorSpec


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


def load_spec(path: str | Path) -> ConnectorSpec:
    """Read and validate the spec at `path`; raise `SpecError` listing every problem found."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file", issues=[]) from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})", issues=[]) from None
    return parse_spec(text, filename=str(path))


def parse_spec(text: str, *, filename: str = "<spec>") -> ConnectorSpec:
    """Validate spec `text`; raise `SpecError` listing every problem with its position."""
    from connectors import CONNECTORS

    data = read_mapping(text, filename, "a spec must be a mapping of fields (name, source_type, ...)")
    source_type = data.get("source_type")
    if source_type not in CONNECTORS:
        known = ", ".join(sorted(CONNECTORS))
        what = "missing" if source_type is None else f"unknown source_type {source_type!r}"
        line, col = _position(data, ("source_type",))
        issue = SpecIssue(filename, line, col, "source_type", f"{what}; known source types: {known}")
        raise SpecError(str(issue), issues=[issue])

    model = CONNECTORS[source_type].spec_model
    try:
        return model.model_validate(plain_yaml(data))
    except ValidationError as exc:
        issues = sorted((_issue(filename, data, err) for err in exc.errors(include_url=False)),
                        key=lambda i: (i.line, i.column))
        raise SpecError("\n".join(str(i) for i in issues), issues=issues) from None


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


def spec_json_schema() -> dict[str, Any]:
    """Return the JSON Schema of every connector spec (a union discriminated by `source_type`)."""
    from connectors import CONNECTORS

    models = tuple(c.spec_model for c in CONNECTORS.values())
    adapter: TypeAdapter[Any] = TypeAdapter(Union[models] if len(models) > 1 else models[0])  # type: ignore[arg-type]  # noqa: UP007
    schema = adapter.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "IPAI connector spec"
    return schema


def spec_json_schema_text() -> str:
    return json.dumps(spec_json_schema(), indent=2, sort_keys=True) + "\n"


def plain_yaml(node: Any) -> Any:
    """Return ruamel's round-trip nodes as plain dicts and lists (what pydantic validates)."""
    if isinstance(node, CommentedMap):
        return {str(k): plain_yaml(v) for k, v in node.items()}
    if isinstance(node, CommentedSeq):
        return [plain_yaml(v) for v in node]
    return node


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
