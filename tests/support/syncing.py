"""One sync of a spec's text, in this process (real Postgres, Delta and the session's Ray), and what a run
planned and recorded in the control plane."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from connectors.specload import parse_spec
from engine.controlplane import records
from engine.controlplane.db import Database
from engine.controlplane.settings import Settings
from engine.run.driver import Progress, RunOptions, RunResult, run_sync


def sync(settings: Settings, database: Database, text: str, *,
         on_progress: Callable[[Progress], None] | None = None, **options: Any) -> RunResult:
    """Run one sync of the spec `text` to completion; `options` are RunOptions fields (`full_refresh=True`)."""
    return run_sync(parse_spec(text), text, db=database, settings=settings, options=RunOptions(**options),
                    on_progress=on_progress)


def planned(database: Database, run_id: str) -> dict[str, dict[str, Any]]:
    """Return the `stream.planned` log fields of a run, by stream."""
    with database.connect() as conn:
        return {r["fields"]["stream"]: r["fields"] for r in records.get_logs(conn, run_id)
                if r["event"] == "stream.planned"}


def recorded_by_extraction(database: Database) -> dict[str, int]:
    """Return {extraction id: partitions recorded in connector_state}."""
    with database.connect() as conn:
        return {str(e): int(n) for e, n in conn.execute(
            "select extraction_id, count(*) from connector_state where kind = 'partition' group by extraction_id")}
