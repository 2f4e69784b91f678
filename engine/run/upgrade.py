"""Upgrading an instance's tables to today's addressing, at the start of its next run.

Before tables were kept per tenant and env, every instance named `shop` wrote `bronze.raw_shop_<stream>`,
`silver.shop_<stream>` and `<lakehouse>/bronze|silver/...`, whatever its tenant and env. The first run after
the upgrade moves the instance's old tables to its own address (layers/addressing.py) before it plans
anything, with a `table.moved` line in the run log, so every row, the load ledger, the Delta markers and the
cursors (kept per instance in the control plane, untouched) carry on: the next incremental run reads only
new rows.

A stream's tables move only when they are wholly this instance's: the new address is still empty, no other
instance claims the old one, and every row of the old bronze table came from one of this instance's
extractions (an old table without any of its rows is another instance's, and left alone). When two instances
shared the old table (twins in two envs), it cannot be split by moving: the run stops before writing, saying
so, and `--full-refresh` reads the source again into the instance's own tables, leaving the old table to the
others. The default tenant's prod instances keep the addresses they had: nothing moves for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from engine.controlplane import locations
from engine.core.errors import ConfigError
from engine.core.spec import ConnectorSpec
from engine.run.context import RunContext
from layers import relocate
from layers.addressing import MAX_IDENTIFIER_BYTES
from layers.bronze.writer import BronzeTarget
from layers.delta import table_uri


@dataclass(frozen=True)
class _Move:
    stream: str
    layer: str  # bronze, quarantine, silver
    kind: str  # postgres or delta
    old: tuple[str, str]  # (schema, table) or (uri, "")
    new: tuple[str, str]


def move_legacy_tables(ctx: RunContext, targets: dict[str, BronzeTarget]) -> None:
    """Move the instance's tables from their pre-upgrade addresses (see the module docstring); raise
    ConfigError, before anything moved, when an old table holds another instance's rows too."""
    moves = [m for name, target in targets.items() for m in _candidates(ctx, name, target)]
    if not moves:
        return
    url = next((t.postgres_url for t in targets.values() if t.postgres_url), None)
    with (psycopg.connect(url, autocommit=True) if url else _NoConnection()) as conn:
        todo = [m for m in moves if _old_exists(conn, m) and not _new_exists(conn, m)]
        if not todo:
            return  # the common case, every run after the upgrade: a few catalog lookups, nothing read
        mine = {str(r[0]) for r in ctx.conn.execute("select id from connector_extractions where instance_id = %s",
                                                    (ctx.instance_id,))}
        rows_of = {(m.stream, m.kind): _extractions(conn, m) for m in todo if m.layer == "bronze"}
        ours = {stream for (stream, _), found in rows_of.items() if found & mine}
        foreign = {stream for (stream, _), found in rows_of.items() if stream in ours and found - mine}
        foreign |= {m.stream for m in todo if m.stream in ours and _claimed_by_another(ctx, m)}
        todo = [m for m in todo if m.stream in ours]
        if foreign and not ctx.options.full_refresh:
            m = next(m for m in todo if m.stream in foreign)
            raise ConfigError(
                f"{_label(m.old, m.kind)} was written before each tenant and env had its own tables, and holds "
                f"another instance's rows as well as this one's ({ctx.spec.name}, env {ctx.spec.env}), so it "
                f"cannot simply move to {_label(m.new, m.kind)}. Run this instance once with --full-refresh to "
                "read its source again into its own tables; the old table stays for the other instance")
        for m in todo:
            if m.stream in foreign:
                continue
            if m.kind == "postgres" and conn is not None:
                ledger = m.old[1] if m.layer == "bronze" else None
                relocate.move_postgres(conn, m.old, m.new, ledger_table=ledger)
            elif m.kind == "delta":
                relocate.move_delta(m.old[0], m.new[0])
            ctx.log("info", "table.moved", f"{m.stream}: {m.layer} table {_label(m.old, m.kind)} moved to "
                    f"{_label(m.new, m.kind)} (tables are now kept per tenant and env); rows, load ledger and "
                    "cursors kept", stream=m.stream, layer=m.layer, old=_label(m.old, m.kind),
                    new=_label(m.new, m.kind))


def _candidates(ctx: RunContext, stream: str, target: BronzeTarget) -> list[_Move]:
    """The stream's tables whose pre-upgrade address differs from today's."""
    spec, address = ctx.spec, ctx.address
    name = f"{spec.name}_{stream}"
    silver = "silver" in spec.layers
    out = []
    if target.postgres_url:
        old_bronze, old_silver = _legacy_schemas(spec)
        silver_schema = spec.destinations.postgres.silver_schema or address.schema("silver")
        pairs: list[tuple[str, tuple[str, str], tuple[str, str]]] = [
                 ("bronze", (old_bronze, _legacy(f"raw_{name}")), (target.postgres_schema, target.table)),
                 ("quarantine", (old_bronze, _legacy(f"quarantine_{name}")),
                  (target.postgres_schema, target.quarantine_table))]
        if silver:
            pairs.append(("silver", (old_silver, _legacy(name)), (silver_schema, address.silver_table(stream))))
        out += [_Move(stream, layer, "postgres", old, new) for layer, old, new in pairs if old != new]
    if target.delta_uri:
        lake = spec.destinations.lakehouse.uri or ctx.settings.lakehouse_uri
        folders = [("bronze", table_uri(lake, "bronze", f"raw_{name}"), target.delta_uri),
                   ("quarantine", table_uri(lake, "bronze", f"quarantine_{name}"), target.quarantine_delta_uri or "")]
        if silver:
            folders.append(("silver", table_uri(lake, "silver", name),
                            address.delta_uri(lake, "silver", address.silver_table(stream))))
        out += [_Move(stream, layer, "delta", (old, ""), (new, "")) for layer, old, new in folders if old != new]
    return out


def _legacy_schemas(spec: ConnectorSpec) -> tuple[str, str]:
    pg = spec.destinations.postgres
    return pg.bronze_schema or "bronze", pg.silver_schema or "silver"


def _legacy(table: str) -> str:
    """The name PostgreSQL gave a table before names were fitted: truncated to 63 bytes."""
    return table.encode()[:MAX_IDENTIFIER_BYTES].decode(errors="ignore")


def _old_exists(conn: psycopg.Connection | None, m: _Move) -> bool:
    if m.kind == "delta":
        return relocate.delta_exists(m.old[0])
    return conn is not None and relocate.postgres_exists(conn, *m.old)


def _new_exists(conn: psycopg.Connection | None, m: _Move) -> bool:
    if m.kind == "delta":
        return relocate.delta_exists(m.new[0])
    return conn is not None and relocate.postgres_exists(conn, *m.new)


def _extractions(conn: psycopg.Connection | None, m: _Move) -> set[str]:
    if m.kind == "delta":
        return relocate.delta_extractions(m.old[0])
    return relocate.postgres_extractions(conn, *m.old) if conn is not None else set()


def _claimed_by_another(ctx: RunContext, m: _Move) -> bool:
    params: tuple[str, ...]
    if m.kind == "delta":
        key = locations.delta_location(m.old[0], layer=m.layer, stream=m.stream, setting="name").key
        where, params = "location = %s", (key,)
    else:
        where, params = "layer = %s and schema_name = %s and table_name = %s", (m.layer, m.old[0], m.old[1])
    return ctx.conn.execute(f"select exists (select from ipai_data_locations where {where} and instance_id <> %s)",
                            (*params, ctx.instance_id)).fetchone() == (True,)


def _label(place: tuple[str, str], kind: str) -> str:
    return f"Delta table {place[0]}" if kind == "delta" else f"Postgres table {place[0]}.{place[1]}"


class _NoConnection:
    """Stands in for a Postgres connection when the spec writes no Postgres."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
