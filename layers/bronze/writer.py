"""The bronze writer: one Ray actor per destination table, committing batches of partitions to Delta
and to Postgres, each idempotently, and acknowledging only what is committed in both.

Schema drift and the quarantine: see `layers/bronze/drift.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa

from engine.core.errors import IpaiError
from engine.core.faults import FaultPlan, crash_point
from layers.bronze.delta import DeltaBronzeTable
from layers.bronze.drift import Conformed, conform_batch
from layers.bronze.postgres import PostgresBronzeTable

QUARANTINE_MARKER = ":quarantine"
"""Suffix of a partition's commit id in the Delta quarantine table's app-transaction markers."""


@dataclass(frozen=True)
class BronzeTarget:
    """Where one bronze table lives; a value sent to the writer actor."""

    table: str
    delta_uri: str | None
    postgres_url: str | None
    postgres_schema: str = "bronze"
    quarantine: str = ""
    """The quarantine table beside it (default: `quarantine_<name>` for `raw_<name>`)."""

    @property
    def quarantine_table(self) -> str:
        """Where rows bronze cannot take are kept (silver's too)."""
        return self.quarantine or f"quarantine_{self.table.removeprefix('raw_')}"

    @property
    def quarantine_delta_uri(self) -> str | None:
        """The quarantine table beside the bronze table in the lakehouse."""
        if self.delta_uri is None:
            return None
        return f"{self.delta_uri.rstrip('/').rsplit('/', 1)[0]}/{self.quarantine_table}"


@dataclass(frozen=True)
class Ack:
    """What the writer committed for one partition.

    `rows` counts the partition's rows: those in bronze plus those quarantined. `quarantined` and
    `reasons` (`"column n: string does not fit int64"` -> rows) say what was set aside; they are filled
    when this write committed the partition somewhere (a replay of a committed partition reports 0).
    """

    commit_id: str
    rows: int
    delta_written: bool
    postgres_written: bool
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class BronzeWriteError(IpaiError):
    """A write failed; carries the cause as text, since driver exceptions (ADBC's) do not pickle."""


class BronzeWriter:
    """Writes batches of finished partitions; Delta and Postgres commits run side by side in threads."""

    def __init__(self, target: BronzeTarget, faults: FaultPlan | None = None) -> None:
        self.target = target
        self.faults = faults
        self.delta = DeltaBronzeTable(target.delta_uri) if target.delta_uri else None
        self.delta_quarantine = DeltaBronzeTable(target.quarantine_delta_uri) if target.quarantine_delta_uri else None
        self.postgres = (
            PostgresBronzeTable(target.postgres_url, target.postgres_schema, target.table,
                                quarantine_table=target.quarantine_table)
            if target.postgres_url else None
        )
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bronze")

    def write(self, commit_ids: list[str], *tables: pa.Table) -> list[Ack]:
        """Commit `tables[i]` under `commit_ids[i]` to every destination; skip what is already there."""
        crash_point(self.faults, "writer.before_commit")
        try:
            parts = self._conform(tables)
        except Exception as exc:  # noqa: BLE001 - re-raised as a picklable error naming the table
            raise BronzeWriteError(f"bronze table {self.target.table}: fitting the partitions to its schema: "
                                   f"{type(exc).__name__}: {exc}") from None
        delta_job = self._pool.submit(self._write_delta, commit_ids, parts) if self.delta else None
        pg_job = self._pool.submit(self._write_postgres, commit_ids, parts) if self.postgres else None
        try:
            delta_written = delta_job.result() if delta_job else set()
        except Exception as exc:  # noqa: BLE001 - re-raised as a picklable error naming the destination
            raise BronzeWriteError(f"Delta table {self.target.delta_uri}: {type(exc).__name__}: {exc}") from None
        finally:
            pg_error = pg_job.exception() if pg_job else None
        if pg_error is not None:
            raise BronzeWriteError(f"Postgres table {self.target.postgres_schema}.{self.target.table}: "
                                   f"{type(pg_error).__name__}: {pg_error}") from None
        pg_written = pg_job.result() if pg_job else set()
        crash_point(self.faults, "writer.after_postgres")
        acks = []
        for cid, t, part in zip(commit_ids, tables, parts, strict=True):
            written = cid in delta_written or cid in pg_written
            acks.append(Ack(cid, t.num_rows, cid in delta_written, cid in pg_written,
                            quarantined=part.quarantined if written else 0,
                            reasons=dict(part.reasons) if written else {}))
        return acks

    def _conform(self, tables: Sequence[pa.Table]) -> list[Conformed]:
        stored = self.delta.stored_schema() if self.delta else None
        in_postgres = False
        if stored is None and self.postgres is not None:
            stored = self.postgres.stored_schema()
            in_postgres = stored is not None
        return conform_batch(tables, stored, stored_in_postgres=in_postgres)

    def _write_delta(self, commit_ids: list[str], parts: list[Conformed]) -> set[str]:
        assert self.delta is not None
        done = self.delta.committed(commit_ids)
        todo = [(cid, p) for cid, p in zip(commit_ids, parts, strict=True) if cid not in done]
        held = [(cid + QUARANTINE_MARKER, p.quarantine) for cid, p in todo if p.quarantine is not None]
        if held and self.delta_quarantine is not None:
            kept = self.delta_quarantine.committed([m for m, _ in held])
            fresh = [(m, q) for m, q in held if m not in kept]
            if fresh:
                self.delta_quarantine.append([m for m, _ in fresh], [q for _, q in fresh])
        rows = [(cid, p.rows) for cid, p in todo if p.rows.num_rows]
        if rows:
            self.delta.append([c for c, _ in rows], [t for _, t in rows])
        crash_point(self.faults, "writer.after_delta")
        return {cid for cid, p in todo if p.rows.num_rows or p.quarantine is not None}

    def _write_postgres(self, commit_ids: list[str], parts: list[Conformed]) -> set[str]:
        assert self.postgres is not None
        return self.postgres.load(commit_ids, [p.rows for p in parts], quarantine=[p.quarantine for p in parts])

    def close(self) -> None:
        if self.postgres is not None:
            self.postgres.close()
        self._pool.shutdown(wait=True)


# -- schema drift ----------------------------------------------------------------------------------
