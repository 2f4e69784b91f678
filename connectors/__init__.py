"""Connectors: one module per source, each offering a spec model and `streams(spec)`.

`CONNECTORS` maps `source_type` to its module's entry point; `AnySpec` is the discriminated union of
every connector's spec model, from which `specs/schema.json` is generated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


from connectors import database, ga4, github, http, odoo, sample
from engine.protocol import Stream
from engine.spec import ConnectorSpec


@dataclass(frozen=True)
class Connector:
    """What the engine needs of a connector: its spec model and how to build its streams."""

    source_type: str
    spec_model: type[ConnectorSpec]
    streams: Callable[[Any], Sequence[Stream]]
    summary: str
    plans_with_ray: bool = False
    """Planning asks the source (parent records, page counts) through the credential's Ray actor."""


CONNECTORS: dict[str, Connector] = {
    "database": Connector("database", database.DatabaseSpec, database.streams,
                          "tables of a PostgreSQL database, read in parallel key ranges over ADBC"),
    "sample": Connector("sample", sample.SampleSpec, sample.streams,
                        "a deterministic shop (customers, orders, order lines); no network"),
    "http": Connector("http", http.HttpSpec, http.streams, "any REST API, declared in YAML alone",
                      plans_with_ray=True),
    "ga4": Connector("ga4", ga4.Ga4Spec, ga4.streams, "Google Analytics 4 reports, one partition per property and day"),
    "github": Connector("github", github.GitHubSpec, github.streams,
                        "GitHub repositories, commits, pull requests, issues and issue comments",
                        plans_with_ray=True),
    "odoo": Connector("odoo", odoo.OdooSpec, odoo.streams,
                      "Odoo's partners, invoices and journal items, sale orders and products: from its PostgreSQL "
                      "or over JSON-RPC / JSON-2", plans_with_ray=True),
}

def connector_for(spec: ConnectorSpec) -> Connector:
    """Return the connector that reads `spec`."""
    return CONNECTORS[spec.source_type]
