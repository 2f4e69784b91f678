"""Connectors: one module per source, each offering a spec model and `streams(spec)`.

`CONNECTORS` maps `source_type` to its module's entry point; `AnySpec` is the discriminated union of
every connector's spec model, from which `specs/schema.json` is generated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


from connectors import sample
from engine.protocol import Stream
from engine.spec import ConnectorSpec


@dataclass(frozen=True)
class Connector:
    """What the engine needs of a connector: its spec model and how to build its streams."""

    source_type: str
    spec_model: type[ConnectorSpec]
    streams: Callable[[Any], Sequence[Stream]]
    summary: str


CONNECTORS: dict[str, Connector] = {
    "sample": Connector("sample", sample.SampleSpec, sample.streams,
                        "a deterministic shop (customers, orders, order lines); no network"),
}



def connector_for(spec: ConnectorSpec) -> Connector:
    """Return the connector that reads `spec`."""
    return CONNECTORS[spec.source_type]
