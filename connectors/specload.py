"""Load a connector spec from YAML, reporting every problem with its line, column and field path.

The spec model is the registered connector's (`connectors.CONNECTORS`), picked by `source_type`; the JSON
Schema of every spec is the union of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union

from pydantic import TypeAdapter, ValidationError

from connectors import CONNECTORS, connector_for
from engine.core.errors import SpecError
from engine.core.spec import ConnectorSpec, selected_streams
from engine.core.yamlfile import SpecIssue, plain_yaml, position, read_mapping, read_text, validation_issues


def load_spec(path: str | Path) -> ConnectorSpec:
    """Read and validate the spec at `path`; raise `SpecError` listing every problem found."""
    path = Path(path)
    return parse_spec(read_text(path), filename=str(path))


def parse_spec(text: str, *, filename: str = "<spec>") -> ConnectorSpec:
    """Validate spec `text`; raise `SpecError` listing every problem with its position."""
    data = read_mapping(text, filename, "a spec must be a mapping of fields (name, source_type, ...)")
    source_type = data.get("source_type")
    if source_type not in CONNECTORS:
        known = ", ".join(sorted(CONNECTORS))
        what = "missing" if source_type is None else f"unknown source_type {source_type!r}"
        line, col = position(data, ("source_type",))
        issue = SpecIssue(filename, line, col, "source_type", f"{what}; known source types: {known}")
        raise SpecError(str(issue), issues=[issue])

    model = CONNECTORS[source_type].spec_model
    try:
        spec: ConnectorSpec = model.model_validate(plain_yaml(data))
    except ValidationError as exc:
        issues = validation_issues(filename, data, exc)
        raise SpecError("\n".join(str(i) for i in issues), issues=issues) from None
    issues = _without_change_log(spec, data, filename)
    if issues:
        raise SpecError("\n".join(str(i) for i in issues), issues=issues)
    return spec


def _without_change_log(spec: ConnectorSpec, data: Any, filename: str) -> list[SpecIssue]:
    """An issue for each selected stream asked to follow a change log (`sync_mode: cdc`) it does not have,
    so the spec is refused when validated, not when a run starts."""
    if spec.sync_mode != "cdc" and not any(s.sync_mode == "cdc" for s in spec.streams):
        return []
    try:
        offered = {s.name: s for s in connector_for(spec).streams(spec)}
        names = selected_streams(spec, list(offered))
    except Exception:  # noqa: BLE001 - streams that cannot be listed offline: the run checks when it plans
        return []
    where = {s.name: i for i, s in enumerate(spec.streams) if s.sync_mode is not None}
    issues = []
    for name in names:
        if spec.stream_mode(name) == "cdc" and not getattr(offered[name], "supports_cdc", False):
            loc: tuple[Any, ...] = ("streams", where[name], "sync_mode") if name in where else ("sync_mode",)
            line, col = position(data, loc)
            issues.append(SpecIssue(filename, line, col, ".".join(str(p) for p in loc),
                                    f"stream {name}: source_type {spec.source_type!r} has no change log to follow "
                                    "(sync_mode cdc); use incremental or full"))
    return issues


def spec_json_schema() -> dict[str, Any]:
    """Return the JSON Schema of every connector spec (a union discriminated by `source_type`)."""
    models = tuple(c.spec_model for c in CONNECTORS.values())
    adapter: TypeAdapter[Any] = TypeAdapter(Union[models] if len(models) > 1 else models[0])  # type: ignore[arg-type]  # noqa: UP007
    schema = adapter.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "IPAI connector spec"
    return schema


def spec_json_schema_text() -> str:
    return json.dumps(spec_json_schema(), indent=2, sort_keys=True) + "\n"


