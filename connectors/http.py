"""The generic HTTP connector (FR-009): a REST API connected by a YAML spec alone.

Every option is documented in `specs/http_example.yaml`; the components are in `connectors.httpkit`.
"""

from __future__ import annotations

from typing import Literal

from connectors.httpkit import HttpApi, HttpSource, HttpStream, ParentPartitioner
from engine.core.spec import ConnectorSpec


class HttpSpec(ConnectorSpec):
    """A spec for any REST API: `source` declares the base URL, limits and streams."""

    source_type: Literal["http"]
    source: HttpSource


def streams(spec: HttpSpec) -> list[HttpStream]:
    """Return one stream per endpoint the spec declares."""
    api = HttpApi.of("http", spec.source, spec.auth)
    by_name = {s.name: s for s in spec.source.streams}
    return [
        HttpStream(api, s, parent=by_name[s.partitions.stream] if isinstance(s.partitions, ParentPartitioner) else None)
        for s in spec.source.streams
    ]
