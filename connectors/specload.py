"""Load a connector spec from YAML, reporting every problem with its line, column and field path.

The spec model is the registered connector's (`connectors.CONNECTORS`), picked by `source_type`; the JSON
Schema of every spec is the union of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union

from pydantic import TypeAdapter, ValidationError

from connectors import CONNECTORS
from engine.core.errors import SpecError
from engine.core.spec import ConnectorSpec
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
        return model.model_validate(plain_yaml(data))
    except ValidationError as exc:
        issues = validation_issues(filename, data, exc)
        raise SpecError("\n".join(str(i) for i in issues), issues=issues) from None


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


