"""Connectors: one module (or package) per source, each offering a spec model and `streams(spec)`.

`CONNECTORS` is the one registry of sources: adding a connector is one entry here, its module, an example
spec in `specs/`, an emulator and its conformance case in `tests/`. Entries name their module instead of
importing it, so reading the registry costs nothing (the CLI lists source types and `ipai db migrate`
records them without loading a single connector); a connector's module is imported the first time its spec
model or streams are needed. The JSON Schema of specs (`connectors.specload.spec_json_schema`) and the
control plane's list of source types (`ipai_source_types`) both come from this registry.

Layering: connectors import `engine.core` only, and one another's public names (`connectors.httpkit`,
`connectors.database`); the engine's run loop imports connectors, never the other way round. A package
(`database/`, `odoo/`, `httpkit/`) says in its `__init__` docstring what each of its modules does; its
modules import each other, never the package.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.core.protocol import Stream
    from engine.core.spec import ConnectorSpec


@dataclass(frozen=True)
class Connector:
    """What the engine needs of a connector: its spec model and how to build its streams."""

    source_type: str
    module: str
    """The module, or package, that defines or re-exports `spec_name` and `streams(spec)`; imported on first use."""
    spec_name: str
    summary: str
    """One line for people: what the connector reads."""
    plans_with_ray: bool = False
    """Planning asks the source (parent records, page counts) through the credential's Ray actor."""

    def _load(self) -> Any:
        return importlib.import_module(self.module)

    @property
    def spec_model(self) -> type[ConnectorSpec]:
        model: type[ConnectorSpec] = getattr(self._load(), self.spec_name)
        return model

    @property
    def streams(self) -> Callable[[Any], Sequence[Stream]]:
        build: Callable[[Any], Sequence[Stream]] = self._load().streams
        return build


CONNECTORS: dict[str, Connector] = {c.source_type: c for c in (
    Connector("database", "connectors.database", "DatabaseSpec",
              "tables of a PostgreSQL, MySQL/MariaDB or SQLite database, read in parallel key ranges"),
    Connector("sample", "connectors.sample", "SampleSpec", "a deterministic shop (customers, orders, order lines); no network"),
    Connector("http", "connectors.http", "HttpSpec", "any REST API, declared in YAML alone", plans_with_ray=True),
    Connector("ga4", "connectors.ga4", "Ga4Spec", "Google Analytics 4 reports, one partition per property and day"),
    Connector("github", "connectors.github", "GitHubSpec",
              "GitHub repositories, commits, pull requests, issues and issue comments", plans_with_ray=True),
    Connector("odoo", "connectors.odoo", "OdooSpec",
              "Odoo's partners, invoices and journal items, sale orders and products: from its PostgreSQL "
              "or over JSON-RPC / JSON-2", plans_with_ray=True),
)}
SOURCE_TYPES: tuple[str, ...] = tuple(sorted(CONNECTORS))
"""Every registered `source_type`, as the control plane records them."""


def connector_for(spec: ConnectorSpec) -> Connector:
    """Return the connector that reads `spec`."""
    return CONNECTORS[spec.source_type]
