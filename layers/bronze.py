"""The bronze writer: one Ray actor per destination table, committing batches of partitions to Delta
and to Postgres, each idempotently, and acknowledging only what is committed in both."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa

from engine.faults import FaultPlan, crash_point
from layers.delta import DeltaBronzeTable
from layers.postgres import PostgresBronzeTable


@dataclass(frozen=True)
class BronzeTarget:
    """Where one bronze table lives; a value sent to the writer actor."""

    table: str
    delta_uri: str | None
    postgres_url: str | None
    postgres_schema: str = "bronze"


@dataclass(frozen=True)
class Ack:
    """What the writer committed for one partition."""

    commit_id: str
    rows: int
    delta_written: bool
    postgres_written: bool


class BronzeWriteError(RuntimeError):
    """A write failed; carries the cause as text, since driver exceptions (ADBC's) do not pickle."""


class BronzeWriter:
    """Writes batches of finished partitions; Delta and Postgres commits run side by side in threads."""

    def __init__(self, target: BronzeTarget, faults: FaultPlan | None = None) -> None:
        self.target = target
        self.faults = faults
        self.delta = DeltaBronzeTable(target.delta_uri) if target.delta_uri else None
        self.postgres = (
            PostgresBronzeTable(target.postgres_url, target.postgres_schema, target.table)
            if target.postgres_url else None
        )
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bronze")

    def write(self, commit_ids: list[str], *tables: pa.Table) -> list[Ack]:
        """Commit `tables[i]` under `commit_ids[i]` to every destination; skip what is already there."""
        crash_point(self.faults, "writer.before_commit")
        delta_job = self._pool.submit(self._write_delta, commit_ids, tables) if self.delta else None
        pg_job = self._pool.submit(self._write_postgres, commit_ids, tables) if self.postgres else None
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
        return [
            Ack(cid, t.num_rows, cid in delta_written, cid in pg_written)
            for cid, t in zip(commit_ids, tables, strict=True)
        ]

    def _write_delta(self, commit_ids: list[str], tables: tuple[pa.Table, ...]) -> set[str]:
        assert self.delta is not None
        done = self.delta.committed(commit_ids)
        todo = [(cid, t) for cid, t in zip(commit_ids, tables, strict=True) if cid not in done and t.num_rows]
        if todo:
            self.delta.append([c for c, _ in todo], [t for _, t in todo])
        crash_point(self.faults, "writer.after_delta")
        return {c for c, _ in todo}

    def _write_postgres(self, commit_ids: list[str], tables: tuple[pa.Table, ...]) -> set[str]:
        assert self.postgres is not None
        return self.postgres.load(commit_ids, list(tables))

    def close(self) -> None:
        if self.postgres is not None:
            self.postgres.close()
        self._pool.shutdown(wait=True)
