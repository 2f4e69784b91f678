"""The control plane's RPC functions as agents and CI call them, in SQL."""

from __future__ import annotations

import json
from typing import Any

import psycopg


def tiny_spec(name: str, *, streams: tuple[str, ...] = ("customers",), **source: Any) -> dict[str, Any]:
    """A JSON sample spec small enough to run in a moment (one partition per stream)."""
    config = {"seed": 3, "days": 30, "customers": 1000, "orders": 1000, "partition_rows": 1000, **source}
    return {"name": name, "source_type": "sample", "sync_mode": "incremental", "source": config,
            "streams": [{"name": s} for s in streams]}


def rpc(conn: psycopg.Connection[Any], sql: str, *params: Any) -> dict[str, Any]:
    """Call one RPC function and return its JSON answer."""
    row = conn.execute(sql, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return dict(row[0])


def create(conn: psycopg.Connection[Any], spec: dict[str, Any], *, env: str | None = None,
           schedule: str | None = None) -> dict[str, Any]:
    """Create (or update) an instance through `connector_create`; fail the test unless it was accepted."""
    answer = rpc(conn, "select public.connector_create(%s::jsonb, %s, %s)", json.dumps(spec), env, schedule)
    assert answer["ok"], answer
    return answer
