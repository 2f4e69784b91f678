"""Sync state: extractions (planned reads), the ledger of committed partitions, stream cursors.

State is rows, not one blob: a partition row is written only after its data is committed in every
destination; a stream's cursor advances only when every partition of its extraction is recorded,
and never moves back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from engine.core.protocol import Partition, Plan
from layers.silver.target import Merge


@dataclass(frozen=True)
class Extraction:
    """One planned read of a stream; reused by later runs until all its partitions are committed."""

    id: str
    stream: str
    sync_mode: str
    cursor_from: Any
    cursor_to: Any
    partitions: tuple[Partition, ...]
    resumed: bool
    _numbers: dict[Partition, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_numbers", {p: i for i, p in enumerate(self.partitions)})

    def partition_no(self, partition: Partition) -> int:
        """Return the partition's number in the stored plan (bronze's `_ipai_partition`)."""
        return self._numbers[partition]

    def commit_id(self, partition: Partition) -> str:
        """Return the id that marks `partition` of this extraction in Delta and in the load ledger."""
        return f"{self.id}:{partition.key}"


def get_cursor(conn: psycopg.Connection[Any], instance_id: str, stream: str) -> Any:
    row = conn.execute(
        "select state_json from connector_state where instance_id = %s and stream = %s and kind = 'cursor'"
        " and key = 'cursor'",
        (instance_id, stream),
    ).fetchone()
    return None if row is None else row[0].get("value")


def get_notes(conn: psycopg.Connection[Any], instance_id: str, stream: str) -> dict[str, dict[str, str]]:
    """Return what readers recorded for the stream in earlier runs, as {kind: {key: value}} (ETags today)."""
    out: dict[str, dict[str, str]] = {}
    for kind, key, data in conn.execute(
        "select kind, key, state_json from connector_state where instance_id = %s and stream = %s"
        " and kind not in ('partition', 'cursor')", (instance_id, stream),
    ):
        out.setdefault(kind, {})[key] = data.get("value")
    return out


def open_extraction(conn: psycopg.Connection[Any], instance_id: str, stream: str) -> Extraction | None:
    """Return the stream's unfinished extraction, if a previous run left one."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "select * from connector_extractions where instance_id = %s and stream = %s and status = 'open'",
            (instance_id, stream),
        ).fetchone()
    if row is None:
        return None
    return Extraction(
        id=str(row["id"]), stream=stream, sync_mode=row["sync_mode"], cursor_from=row["cursor_from"],
        cursor_to=row["cursor_to"], partitions=tuple(Partition.from_json(p) for p in row["partitions"]),
        resumed=True,
    )


def create_extraction(
    conn: psycopg.Connection[Any], instance_id: str, stream: str, *, run_id: str, sync_mode: str,
    cursor_from: Any, plan: Plan,
) -> Extraction:
    row = conn.execute(
        "insert into connector_extractions (instance_id, stream, run_id, sync_mode, cursor_from, cursor_to,"
        " partitions, primary_key) values (%s, %s, %s, %s, %s, %s, %s, %s) returning id",
        (instance_id, stream, run_id, sync_mode, json.dumps(cursor_from), json.dumps(plan.cursor_to),
         json.dumps([p.to_json() for p in plan.partitions]), list(plan.primary_key) or None),
    ).fetchone()
    assert row is not None
    return Extraction(str(row[0]), stream, sync_mode, cursor_from, plan.cursor_to, tuple(plan.partitions),
                      resumed=False)


def abandon_open_extractions(conn: psycopg.Connection[Any], instance_id: str, streams: list[str]) -> int:
    """Close unfinished extractions (for a full refresh); their committed data stays in bronze."""
    cur = conn.execute(
        "update connector_extractions set status = 'abandoned', finished_at = now()"
        " where instance_id = %s and stream = any(%s) and status = 'open'",
        (instance_id, streams),
    )
    return cur.rowcount


def committed_keys(conn: psycopg.Connection[Any], extraction_id: str) -> dict[str, int]:
    """Return {partition key: rows} for the extraction's partitions already recorded."""
    rows = conn.execute(
        "select key, rows from connector_state where extraction_id = %s and kind = 'partition'",
        (extraction_id,),
    ).fetchall()
    return {key: int(n or 0) for key, n in rows}


def record_partitions(
    conn: psycopg.Connection[Any], instance_id: str, extraction: Extraction, run_id: str,
    committed: list[tuple[Partition, int]], *, notes: Sequence[dict[str, dict[str, str]]] = (),
) -> None:
    """Record partitions whose data is committed in every destination (idempotent), with the readers' notes."""
    if not committed:
        return
    with conn.transaction(), conn.cursor() as cur:
        for note in notes:
            for kind, entries in note.items():
                cur.executemany(
                    "insert into connector_state (instance_id, stream, kind, key, run_id, state_json)"
                    " values (%s, %s, %s, %s, %s, %s) on conflict (instance_id, stream, kind, key)"
                    " do update set state_json = excluded.state_json, run_id = excluded.run_id, updated_at = now()",
                    [(instance_id, extraction.stream, kind, key, run_id, json.dumps({"value": value}))
                     for key, value in entries.items()],
                )
        cur.executemany(
            "insert into connector_state (instance_id, stream, kind, key, extraction_id, run_id, rows,"
            " state_json) values (%s, %s, 'partition', %s, %s, %s, %s, %s)"
            " on conflict (instance_id, stream, kind, key) do nothing",
            [(instance_id, extraction.stream, extraction.commit_id(p), extraction.id, run_id, n,
              json.dumps({**p.to_json(), "no": extraction.partition_no(p)})) for p, n in committed],
        )


def finish_extraction(
    conn: psycopg.Connection[Any], instance_id: str, extraction: Extraction, run_id: str,
    cursor_to: Any | None = None,
) -> Any:
    """Mark the extraction done and advance the stream cursor to its upper bound; return the cursor.

    A stored watermark never moves back: a full refresh that ends below it leaves it where it was.
    """
    target = extraction.cursor_to if cursor_to is None else cursor_to
    with conn.transaction():
        current = conn.execute(
            "select state_json from connector_state where instance_id = %s and stream = %s"
            " and kind = 'cursor' and key = 'cursor' for update",
            (instance_id, extraction.stream),
        ).fetchone()
        value = None if current is None else current[0].get("value")
        if target is not None and (value is None or _after(target, value)):
            value = target
            conn.execute(
                "insert into connector_state (instance_id, stream, kind, key, run_id, state_json)"
                " values (%s, %s, 'cursor', 'cursor', %s, %s) on conflict (instance_id, stream, kind, key)"
                " do update set state_json = excluded.state_json, run_id = excluded.run_id, updated_at = now()",
                (instance_id, extraction.stream, run_id, json.dumps({"value": value})),
            )
        conn.execute(
            "update connector_extractions set status = 'done', finished_at = now() where id = %s",
            (extraction.id,),
        )
    return value


def unmerged_extractions(conn: psycopg.Connection[Any], instance_id: str, stream: str) -> list[Merge]:
    """Finished extractions of the stream whose bronze rows are not yet merged into silver, oldest first
    (a run that stopped between its last commit and its silver merge leaves one for the next run)."""
    rows = conn.execute(
        "select id, sync_mode = 'full' or cursor_from is null or cursor_from = 'null'::jsonb, created_at"
        " from connector_extractions where instance_id = %s and stream = %s and status = 'done'"
        " and silver_merged_at is null order by finished_at, created_at", (instance_id, stream),
    ).fetchall()
    return [Merge(str(i), bool(complete), started) for i, complete, started in rows]


def known_key(conn: psycopg.Connection[Any], instance_id: str, stream: str) -> tuple[str, ...]:
    """The primary key the source named when the stream was last planned (CDC's later runs plan without
    reading the catalog)."""
    row = conn.execute(
        "select primary_key from connector_extractions where instance_id = %s and stream = %s"
        " and primary_key is not null order by created_at desc limit 1", (instance_id, stream),
    ).fetchone()
    return tuple(row[0]) if row else ()


def mark_merged(conn: psycopg.Connection[Any], merges: Sequence[Merge]) -> None:
    """Record that these extractions' rows are in silver."""
    conn.execute("update connector_extractions set silver_merged_at = now() where id = any(%s::uuid[])",
                 ([m.extraction_id for m in merges],))


def _after(a: Any, b: Any) -> bool:
    """Order two cursor values; both are stored in one lossless form per stream (UTC ISO text or numbers)."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a > b
    return str(a) > str(b)


def show(conn: psycopg.Connection[Any], instance_id: str) -> list[dict[str, Any]]:
    """Return per-stream state: cursor, open extraction and committed partition counts."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "with streams as (select distinct stream from connector_state where instance_id = %(i)s"
            "  union select distinct stream from connector_extractions where instance_id = %(i)s)"
            " select s.stream,"
            "  (select state_json->>'value' from connector_state c where c.instance_id = %(i)s"
            "     and c.stream = s.stream and c.kind = 'cursor') as cursor,"
            "  (select count(*) from connector_state c where c.instance_id = %(i)s and c.stream = s.stream"
            "     and c.kind = 'partition') as partitions_committed,"
            "  (select coalesce(sum(rows), 0) from connector_state c where c.instance_id = %(i)s"
            "     and c.stream = s.stream and c.kind = 'partition') as rows_committed,"
            "  (select jsonb_array_length(partitions) from connector_extractions e where e.instance_id = %(i)s"
            "     and e.stream = s.stream and e.status = 'open') as open_extraction_partitions"
            " from streams s order by s.stream",
            {"i": instance_id},
        ).fetchall()


def reset(conn: psycopg.Connection[Any], instance_id: str, stream: str | None = None) -> int:
    """Forget the cursor, ledger and open extractions of an instance (or one stream); return rows removed.

    The next run re-reads from the beginning. Bronze data already loaded stays where it is.
    """
    with conn.transaction():
        n = conn.execute(
            "delete from connector_state where instance_id = %s and (%s::text is null or stream = %s)",
            (instance_id, stream, stream),
        ).rowcount
        conn.execute(
            "update connector_extractions set status = 'abandoned', finished_at = now()"
            " where instance_id = %s and status = 'open' and (%s::text is null or stream = %s)",
            (instance_id, stream, stream),
        )
    return n
