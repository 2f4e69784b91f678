"""PostgreSQL change data capture for the `database` source (FR-003, `sync_mode: cdc`).

Each table streamed in cdc mode gets a publication and a logical replication slot of the same name
(`slot:`, default `ipai_<spec>_<stream>`), decoded by `pgoutput`, which every PostgreSQL has built in. The
publication is made first (pgoutput sends only tables that were published when a change was written) and
carries the owner in its comment, `ipai instance <id>`: a slot or publication of that name that another
instance or tool made is refused, never taken over.

    first run (no cursor, or --full-refresh)
        publication; CREATE_REPLICATION_SLOT ... (SNAPSHOT 'export') on a replication connection, which the
        driver holds open while the snapshot is read: the slot's consistent point L0 and a snapshot that
        sees exactly the transactions committed before L0. Partitions: the table in key ranges, each read
        in its own REPEATABLE READ transaction that imports that snapshot (`_ipai_op` 'r', `_ipai_lsn` L0),
        plus the changes [L0, hi). Nothing falls between snapshot and stream, nothing is in both.
    later runs
        one partition: the changes [cursor, hi), hi = the WAL insert position while planning (a record
        boundary). The reader waits until WAL is flushed past hi, then peeks the slot
        (`pg_logical_slot_peek_binary_changes`, upto hi) and keeps the transactions whose commit LSN is in
        the window, so a change is delivered once even when the slot lags behind the cursor.
    after the stream's partitions are committed in bronze and the cursor stored
        `pg_replication_slot_advance(slot, cursor)`: the slot's confirmed LSN never passes what bronze holds;
        a run that ends before that leaves the slot behind, and the next run advances it to the stored cursor.

Every change row carries `_ipai_op` ('c' insert, 'u' update, 'd' delete: a tombstone with the key, and the
whole old row under REPLICA IDENTITY FULL; 't' truncate), `_ipai_lsn` (its transaction's commit LSN as a
number; the snapshot's rows have L0) and `_ipai_seq` (its order in the transaction; -1 in the snapshot).
Silver keeps, per key, the row with the greatest (`_ipai_lsn`, `_ipai_seq`) and turns 'd' into a soft
delete. An update that changes the key also sends a tombstone for the old key. A TOASTed value an update did
not change is not in the WAL: it is taken from the old row when the table has REPLICA IDENTITY FULL, else
left null and its column named in `_ipai_unchanged`, so silver keeps the value it has.

A snapshot lost with its driver (a crash while it was read) cannot be resumed: the next run drops this
instance's slot and starts a new snapshot; silver takes the newest complete snapshot as the base.

Server settings: `wal_level = logical` (a restart), `max_replication_slots` and `max_wal_senders` above the
slots in use, and a role with REPLICATION (or superuser) that owns the tables (to publish them).

This module runs in the driver (slots, publications, the exported snapshot, planning, confirming, dropping);
the read tasks decode a window of changes in connectors/database/cdc/changes.py, and a snapshot partition is
read by the table stream through a connection that imports the snapshot (the PostgreSQL dialect).
"""

from __future__ import annotations

from typing import Any, Protocol

import psycopg

from connectors.database.cdc import pgoutput
from connectors.database.dialects import PostgresDialect, dialect_for, driver_message
from connectors.database.dialects.postgres import conninfo
from connectors.database.guard import SourceAccess, check_source
from connectors.database.spec import TableSpec
from engine.core.egress import EgressPolicy
from engine.core.errors import ConfigError
from engine.core.protocol import Partition, Plan, PlanContext
from engine.core.spec import redact_url

WAL_ADVICE = ("CDC needs wal_level = logical on the source server: set it in postgresql.conf (or run "
              "ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL; the role also needs REPLICATION "
              "(or superuser), and max_replication_slots / max_wal_senders room for one slot per table")

BOOKKEEPING = EgressPolicy(loopback=True, private=True, networks=("0.0.0.0/0", "::/0"))
"""Where the driver confirms and drops its own slots (`committed`, `drop`): any server but link-local and metadata
addresses. Those calls take no options; the planning that made the slot checked the same URL in full."""

_EXPORTED: dict[str, tuple[psycopg.Connection[Any], str]] = {}
"""slot -> (the replication connection holding its exported snapshot, the snapshot's name); driver process."""


class TableStream(Protocol):
    """What CDC needs of a table stream (`DatabaseStream` in connectors/database/stream.py, which calls in here)."""

    @property
    def spec_name(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def table(self) -> TableSpec: ...
    @property
    def partition_rows(self) -> int: ...


def slot_name(stream: TableStream) -> str:
    return stream.table.slot or f"ipai_{stream.spec_name}_{stream.name}".lower()[:63]


def owner_mark(instance_id: str) -> str:
    return f"ipai instance {instance_id}"


def connect(url: str, access: SourceAccess | None, **kwargs: Any) -> psycopg.Connection[Any]:
    """An autocommit connection to the source server, with every parameter explicit (`conninfo`); with `access`,
    to an address its egress policy allows and, before anything is read, never the control plane as the
    platform (a replication connection runs no SQL: the plan checks the server on its plain connection).
    A failure to connect is a ConfigError, URL redacted."""
    info = conninfo(url, access.egress if access is not None else BOOKKEEPING, read_only=False)
    try:
        conn = psycopg.connect(info, autocommit=True, **kwargs)
    except psycopg.Error as exc:
        raise ConfigError(f"source database {redact_url(url)}: {driver_message(url, exc)}") from None
    if access is not None and "replication" not in kwargs:
        try:
            check_source(conn, access.control_plane, where=f"source database {redact_url(url)}")
        except BaseException:
            conn.close()
            raise
    return conn


# -- planning (driver) -----------------------------------------------------------------------------------


def plan(stream: TableStream, ctx: PlanContext, url: str) -> Plan:
    if not isinstance(dialect_for(url), PostgresDialect):
        raise ConfigError(f"stream {stream.name}: sync_mode cdc follows PostgreSQL's write-ahead log; "
                          "for other databases use incremental with a cursor column")
    slot = slot_name(stream)
    access = SourceAccess.of(ctx.options)
    with connect(url, access) as conn:
        _check_server(conn, url)
        _check_table(conn, stream, url)
        slot_row = _ownership(conn, slot, ctx.instance_id, url)
        if ctx.cursor is None:
            return _plan_snapshot(stream, conn, url, slot, slot_row is not None, ctx.instance_id, access)
        if slot_row is None:
            raise ConfigError(f"stream {stream.name}: replication slot {slot} is gone from {redact_url(url)}, "
                              "so changes since the last run cannot be read; run with --full-refresh to take "
                              "a new snapshot")
        confirmed, lost = slot_row
        cursor = int(ctx.cursor)
        if lost:
            raise ConfigError(f"stream {stream.name}: replication slot {slot} was invalidated by the server "
                              "(its WAL was removed, max_slot_wal_keep_size); run with --full-refresh to take a "
                              "new snapshot")
        if confirmed is not None and pgoutput.lsn_int(confirmed) > cursor:
            raise ConfigError(f"stream {stream.name}: replication slot {slot} was advanced past this instance's "
                              f"cursor ({confirmed} > {pgoutput.lsn_text(cursor)}) by something else; changes "
                              "in between are lost to it: run with --full-refresh")
        _advance(conn, slot, cursor)  # the stored cursor is committed in bronze: confirm it if not yet
        hi = _insert_lsn(conn)
        if hi <= cursor:
            return Plan([], cursor_to=cursor)
        return Plan([_changes_partition(stream, slot, cursor, hi)], cursor_to=hi)


def _changes_partition(stream: TableStream, slot: str, lo: int, hi: int) -> Partition:
    return Partition(stream.name, (("slot", slot),), (lo, hi))


def _check_server(conn: psycopg.Connection[Any], url: str) -> None:
    row = conn.execute("select current_setting('wal_level')").fetchone()
    level = row[0] if row else "?"
    if level != "logical":
        raise ConfigError(f"source database {redact_url(url)} runs with wal_level = {level}. {WAL_ADVICE}")


def _check_table(conn: psycopg.Connection[Any], stream: TableStream, url: str) -> None:
    t = stream.table
    row = conn.execute(
        "select c.relreplident, exists (select from pg_index i where i.indrelid = c.oid and i.indisprimary)"
        " from pg_class c where c.oid = to_regclass(%s)", (f"{_quoted(t.schema_name)}.{_quoted(t.table_name)}",)).fetchone()
    if row is None:
        raise ConfigError(f"table {t.table} does not exist in {redact_url(url)}")
    identity, has_pk = row
    if identity == "n" or (identity == "d" and not has_pk):
        # Publishing a table without a replica identity makes its UPDATEs and DELETEs fail on the source.
        raise ConfigError(f"stream {stream.name}: table {t.table} has no primary key, so PostgreSQL cannot say "
                          "which row an update or delete changed; add a primary key, or run ALTER TABLE "
                          f"{t.table} REPLICA IDENTITY FULL, before following it with cdc")


def _ownership(conn: psycopg.Connection[Any], slot: str, instance_id: str,
               url: str) -> tuple[str | None, bool] | None:
    """(confirmed LSN, invalidated) of this instance's slot, or None when there is no slot. Refuses a slot or
    publication of that name that another instance or tool made."""
    mark = owner_mark(instance_id)
    slot_row = conn.execute(
        "select database = current_database() and plugin = 'pgoutput', confirmed_flush_lsn::text,"
        " coalesce(wal_status = 'lost', false) from pg_replication_slots where slot_name = %s", (slot,)).fetchone()
    pub = conn.execute("select obj_description(oid, 'pg_publication') from pg_publication where pubname = %s",
                       (slot,)).fetchone()
    owner = None if pub is None else (pub[0] or "")
    foreign = (pub is not None and owner != mark) or (slot_row is not None and (pub is None or not slot_row[0]))
    if foreign:
        who = (f"ipai {owner[5:]}" if owner and owner.startswith("ipai instance ") and owner != mark
               else "a tool other than this instance")
        raise ConfigError(f"replication slot or publication {slot!r} already exists on {redact_url(url)} and "
                          f"belongs to {who}; it is never taken over. Give this table another `slot:` name, or "
                          "drop it from its owner (`ipai cdc drop INSTANCE`)")
    return None if slot_row is None else (slot_row[1], bool(slot_row[2]))


def _plan_snapshot(stream: TableStream, conn: psycopg.Connection[Any], url: str, slot: str, slot_exists: bool,
                   instance_id: str, access: SourceAccess) -> Plan:
    close_snapshot(slot)
    if slot_exists:
        conn.execute("select pg_drop_replication_slot(%s)", (slot,))  # ours (checked): a new snapshot needs a new slot
    t = stream.table
    if conn.execute("select 1 from pg_publication where pubname = %s", (slot,)).fetchone() is None:
        conn.execute(f'create publication "{slot}" for table {_quoted(t.schema_name)}.{_quoted(t.table_name)}')
        conn.execute(f'comment on publication "{slot}" is {_literal(owner_mark(instance_id))}')
    rep = connect(url, access, replication="database")
    result = rep.pgconn.exec_(f"CREATE_REPLICATION_SLOT \"{slot}\" LOGICAL pgoutput (SNAPSHOT 'export')".encode())
    if result.status != psycopg.pq.ExecStatus.TUPLES_OK:
        message = (result.error_message or b"").decode(errors="replace").strip()
        rep.close()
        raise ConfigError(f"stream {stream.name}: could not create replication slot {slot} on "
                          f"{redact_url(url)}: {message}. {WAL_ADVICE}")
    consistent = pgoutput.lsn_int((result.get_value(0, 1) or b"").decode())
    snapshot = (result.get_value(0, 2) or b"").decode()
    _EXPORTED[slot] = (rep, snapshot)
    try:
        hi = _insert_lsn(conn)
        d = dialect_for(url)
        with d.catalog(url, access, snapshot=snapshot) as cat:
            columns, pk = d.columns(cat, t, url)
            by_name = {c.name: c for c in columns}
            key = d.partition_key(t, by_name, pk)
            ranges = d.key_ranges(cat, t, key, by_name, None, partition_rows=stream.partition_rows)
    except BaseException:
        close_snapshot(slot)
        raise
    parts = [Partition(stream.name, (("key", key or ""), ("from", lo), ("to", hi_key), ("snapshot", snapshot),
                                     ("lsn", consistent)))
             for lo, hi_key in ranges]
    if hi > consistent:
        parts.append(_changes_partition(stream, slot, consistent, hi))
    return Plan(parts, cursor_to=max(hi, consistent), primary_key=tuple(pk))


def resumable(stream: TableStream, partitions: list[Partition]) -> bool:
    """Whether an unfinished extraction can go on in this process: snapshot reads need the exported snapshot,
    which lives only as long as the replication connection of the driver that made it."""
    names = {dict(p.where)["snapshot"] for p in partitions if "snapshot" in dict(p.where)}
    if not names:
        return True
    held = _EXPORTED.get(slot_name(stream))
    return held is not None and not held[0].closed and names == {held[1]}


def committed(stream: TableStream, cursor: Any, url: str) -> None:
    """The stream's partitions are in bronze up to `cursor`: confirm it to the slot, release the snapshot."""
    slot = slot_name(stream)
    close_snapshot(slot)
    if cursor is not None:
        with connect(url, None) as conn:
            _advance(conn, slot, int(cursor))


def close_snapshot(slot: str) -> None:
    held = _EXPORTED.pop(slot, None)
    if held is not None:
        held[0].close()


def drop(url: str, slot: str, instance_id: str) -> list[str]:
    """Remove this instance's slot and publication; return what was removed. Refuses another owner's."""
    close_snapshot(slot)
    removed = []
    with connect(url, None) as conn:
        slot_row = _ownership(conn, slot, instance_id, url)
        if slot_row is not None:
            active = conn.execute("select active_pid from pg_replication_slots where slot_name = %s", (slot,)).fetchone()
            if active and active[0]:
                raise ConfigError(f"replication slot {slot} is in use by server process {active[0]} (a run reading "
                                  "it); wait for the run to end, then drop it")
            conn.execute("select pg_drop_replication_slot(%s)", (slot,))
            removed.append(f"replication slot {slot}")
        if conn.execute("select 1 from pg_publication where pubname = %s", (slot,)).fetchone():
            conn.execute(f'drop publication "{slot}"')
            removed.append(f"publication {slot}")
    return removed


def _advance(conn: psycopg.Connection[Any], slot: str, lsn: int) -> None:
    conn.execute("select pg_replication_slot_advance(%s, %s::pg_lsn) from pg_replication_slots"
                 " where slot_name = %s and confirmed_flush_lsn < %s::pg_lsn",
                 (slot, pgoutput.lsn_text(lsn), slot, pgoutput.lsn_text(lsn)))


def _insert_lsn(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select pg_current_wal_insert_lsn()::text").fetchone()
    return pgoutput.lsn_int(row[0]) if row else 0


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
