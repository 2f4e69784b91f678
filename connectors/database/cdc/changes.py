"""Reading a CDC stream's changes in its Ray task (`sync_mode: cdc`; the slots, the snapshot and planning are
connectors/database/cdc/replication.py's).

A changes partition is the window [lo, hi) of the stream's replication slot: the reader waits until WAL is
flushed past hi, peeks the slot (`pg_logical_slot_peek_binary_changes`, upto hi, never consuming it) and
keeps the transactions whose commit LSN is in the window. Each change becomes a row of the table's bronze
types plus the change columns `_ipai_op`, `_ipai_lsn`, `_ipai_seq` and `_ipai_unchanged` (what they hold:
replication.py's docstring); a snapshot partition's rows get the same columns, op 'r'.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pyarrow as pa

from connectors.database.cdc import pgoutput
from connectors.database.cdc.replication import connect
from connectors.database.dialects import Column, PostgresDialect
from connectors.database.guard import SourceAccess
from engine.core.errors import TransientError
from engine.core.protocol import Partition

CDC_FIELDS = (pa.field("_ipai_op", pa.string()), pa.field("_ipai_lsn", pa.int64()),
              pa.field("_ipai_seq", pa.int32()), pa.field("_ipai_unchanged", pa.string()))
BATCH_ROWS = 50_000
FLUSH_WAIT_S = 30.0


def with_snapshot_columns(batch: pa.RecordBatch, lsn: int) -> pa.RecordBatch:
    """A snapshot batch with the change columns: op 'r' at the slot's consistent point."""
    n = batch.num_rows
    values = [pa.repeat(pa.scalar("r"), n), pa.repeat(pa.scalar(lsn, pa.int64()), n),
              pa.repeat(pa.scalar(-1, pa.int32()), n), pa.nulls(n, pa.string())]
    return pa.RecordBatch.from_arrays([*batch.columns, *values], schema=pa.schema([*batch.schema, *CDC_FIELDS]))


def read_changes(columns: tuple[Column, ...], key: tuple[str, ...], url: str, partition: Partition, *,
                 access: SourceAccess) -> Iterator[pa.RecordBatch]:
    """The changes of one window [lo, hi) of the slot, as batches in commit order."""
    slot = dict(partition.where)["slot"]
    lo, hi = (int(v) for v in partition.window)
    with connect(url, access) as conn:
        _wait_flushed(conn, hi)
        conn.execute("set timezone = 'UTC'; set datestyle = 'ISO, YMD'; set bytea_output = 'hex';"
                     " set extra_float_digits = 3; set intervalstyle = 'postgres'")
        rows = _Rows(columns, key)
        keep = False
        with conn.transaction(), conn.cursor(name="ipai_cdc") as cur:
            cur.itersize = 2_000
            cur.execute("select data from pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, null,"
                        " 'proto_version', '1', 'publication_names', %s)", (slot, pgoutput.lsn_text(hi), slot))
            for (data,) in cur:
                message = pgoutput.decode(bytes(data))
                if isinstance(message, pgoutput.Begin):
                    keep = lo <= message.lsn < hi
                    rows.begin(message.lsn)
                elif isinstance(message, pgoutput.Relation):
                    rows.relations[message.oid] = message
                elif isinstance(message, pgoutput.Change) and keep:
                    rows.add(message)
                    if len(rows) >= BATCH_ROWS:
                        yield rows.flush()
        if len(rows):
            yield rows.flush()


def _wait_flushed(conn: psycopg.Connection[Any], lsn: int) -> None:
    """Wait until WAL is flushed past `lsn` (a record boundary), so every transaction committed before it can
    be decoded; the WAL writer flushes within wal_writer_delay."""
    deadline = time.monotonic() + FLUSH_WAIT_S
    while True:
        row = conn.execute("select pg_current_wal_flush_lsn()::text").fetchone()
        if row and pgoutput.lsn_int(row[0]) >= lsn:
            return
        if time.monotonic() > deadline:
            raise TransientError(f"the source's WAL was not flushed to {pgoutput.lsn_text(lsn)} "
                                 f"within {FLUSH_WAIT_S:.0f} s")
        time.sleep(0.05)


class _Rows:
    """Change rows collected column-wise and turned into Arrow batches of the table's bronze types."""

    def __init__(self, columns: tuple[Column, ...], key: tuple[str, ...]) -> None:
        pg = PostgresDialect()
        self.columns = columns
        self.key = key
        self.types = [pgoutput.converter(c.type, pg.arrow_type(c)) for c in columns]
        self.relations: dict[int, pgoutput.Relation] = {}
        self.values: list[list[Any]] = [[] for _ in columns]
        self.op: list[str] = []
        self.lsn: list[int] = []
        self.seq: list[int] = []
        self.unchanged: list[str | None] = []
        self.txn_lsn = 0
        self.txn_seq = 0

    def __len__(self) -> int:
        return len(self.op)

    def begin(self, lsn: int) -> None:
        self.txn_lsn, self.txn_seq = lsn, 0

    def add(self, change: pgoutput.Change) -> None:
        if change.op == "t":
            self._append("t", {}, None)
            return
        relation = self.relations[change.relation]
        old = dict(zip(relation.columns, change.old, strict=True)) if change.old is not None else None
        if change.op == "d":
            self._append("d", old or {}, None)
            return
        new = dict(zip(relation.columns, change.new or (), strict=True))
        if change.op == "u" and old is not None and any(old.get(k) != new.get(k) for k in self.key):
            self._append("d", old, None)  # the key changed: the old key's row is gone
        unchanged = []
        for name, value in new.items():
            if value is pgoutput.UNCHANGED:
                kept = old.get(name) if old is not None else None
                if kept is None or kept is pgoutput.UNCHANGED:
                    unchanged.append(name)
                    new[name] = None
                else:
                    new[name] = kept
        self._append(change.op, new, ",".join(unchanged) or None)

    def _append(self, op: str, row: dict[str, Any], unchanged: str | None) -> None:
        for values, column in zip(self.values, self.columns, strict=True):
            value = row.get(column.name)
            values.append(None if value is pgoutput.UNCHANGED else value)
        self.op.append(op)
        self.lsn.append(self.txn_lsn)
        self.seq.append(self.txn_seq)
        self.unchanged.append(unchanged)
        self.txn_seq += 1

    def flush(self) -> pa.RecordBatch:
        arrays = [pgoutput.to_array(values, typ, parse) for values, (typ, parse) in zip(self.values, self.types, strict=True)]
        arrays += [pa.array(self.op, pa.string()), pa.array(self.lsn, pa.int64()), pa.array(self.seq, pa.int32()),
                   pa.array(self.unchanged, pa.string())]
        fields = [pa.field(c.name, typ) for c, (typ, _) in zip(self.columns, self.types, strict=True)]
        batch = pa.RecordBatch.from_arrays(arrays, schema=pa.schema([*fields, *CDC_FIELDS]))
        self.values = [[] for _ in self.columns]
        self.op, self.lsn, self.seq, self.unchanged = [], [], [], []
        return batch
