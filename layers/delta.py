"""Where tables live in the Delta lakehouse: one folder (or object-store prefix) per layer and table."""

from __future__ import annotations


def table_uri(lakehouse_uri: str, layer: str, table: str) -> str:
    """Return the URI of `table` in `layer` (bronze, silver ...) of the lakehouse."""
    return f"{lakehouse_uri.rstrip('/')}/{layer}/{table}"
