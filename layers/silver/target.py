"""What a silver merge is given: where a stream's silver table lives (`SilverTarget`), which finished
extractions to merge (`Merge`, from the state ledger), and what it did (`SilverResult`). Values only: they
cross into Ray tasks."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

BRONZE_ONLY = ("_ipai_extraction_id", "_ipai_partition")
"""System columns that describe a bronze load, not a row's state: silver drops them."""
CHUNK_ROWS = 1_000_000


@dataclass(frozen=True)
class SilverTarget:
    """Where one stream's silver table lives and how its rows are versioned; a value sent to a Ray task."""

    table: str
    key: tuple[str, ...]
    cursor: str | None
    bronze_table: str
    delta_uri: str | None = None
    bronze_delta_uri: str | None = None
    quarantine_table: str = ""
    """Rows silver cannot take go to this table beside bronze (default `quarantine_<table>`)."""
    quarantine_delta_uri: str | None = None
    postgres_url: str | None = None
    postgres_schema: str = "silver"
    bronze_postgres_schema: str = "bronze"
    partition_by: tuple[str, ...] = ()
    flatten: tuple[tuple[str, str, str], ...] = ()
    """(column, dotted path, type) of nested fields lifted into columns (see `layers.silver.flatten`)."""
    chunk_rows: int = CHUNK_ROWS


@dataclass
class SilverResult:
    """What one merge did, for the run's log and metrics."""

    rows_in: int = 0
    rows_merged: int = 0
    quarantined: int = 0
    missing_deleted: int = 0
    """Keys a complete extraction did not deliver, soft-deleted."""
    reasons: dict[str, int] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class Merge:
    """One finished extraction to merge into silver."""

    extraction_id: str
    complete: bool
    """It read the whole source (a full sync, a first read, a CDC snapshot): a key silver has that it did not
    deliver was deleted at the source."""
    started_at: datetime
    """When it was planned: every row it delivered was read after this."""
