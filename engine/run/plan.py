"""Planning: which streams a run reads, which of their partitions are still to read, and where their rows go.

For each selected stream, `plan_streams` resumes its open extraction (partitions committed by an earlier run are
not read again) or plans a new one from the stored cursor, names its bronze table and, with the silver layer, its
silver table; it yields a `StreamRun`, the bookkeeping the read/write loop then keeps for the stream.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from connectors import connector_for
from engine.controlplane import locations, state
from engine.core.egress import check_host
from engine.core.errors import ConfigError
from engine.core.protocol import Partition, PlanContext, Stream
from engine.core.spec import SecretRef, selected_streams
from engine.core.sql import describe_error
from engine.core.urls import with_tls
from engine.run.context import RunContext
from engine.run.progress import RunProgress
from engine.run.upgrade import move_legacy_tables
from layers.bronze.writer import BronzeTarget
from layers.refresh import SilverTarget, silver_target


@dataclass
class StreamRun:
    """Driver-side bookkeeping of one stream in this run."""

    stream: Stream
    extraction: state.Extraction
    writer: Any
    target: BronzeTarget
    remaining: int  # partitions not yet recorded
    queued: deque[Partition] = field(default_factory=deque)
    reading: int = 0
    writing: int = 0
    pending: list[tuple[Partition, Any, int]] = field(default_factory=list)  # (partition, table ref, rows)
    cursor: Any = None
    pending_since: float = 0.0
    notes: dict[str, dict[str, str]] = field(default_factory=dict)  # what readers recorded in earlier runs
    silver: SilverTarget | None = None

    @property
    def pending_rows(self) -> int:
        return sum(n for _, _, n in self.pending)


def plan_streams(ctx: RunContext, progress: RunProgress) -> Iterator[StreamRun]:
    """Plan the spec's selected streams one by one, yielding each as it is planned (`remaining` 0: nothing to
    read, the caller finishes it). Raises ConfigError for a stream the spec cannot have."""
    spec, options = ctx.spec, ctx.options
    offered = {s.name: s for s in connector_for(spec).streams(spec)}
    try:
        names = selected_streams(spec, list(offered))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    targets = {name: _bronze_target(ctx, name) for name in names}
    move_legacy_tables(ctx, targets)
    claim_tables(ctx, targets)
    if options.full_refresh:
        state.abandon_open_extractions(ctx.conn, ctx.instance_id, names)
    for name in names:
        stream = offered[name]
        extraction = _extraction(ctx, stream)
        done = state.committed_keys(ctx.conn, extraction.id)
        todo = [p for p in extraction.partitions if extraction.commit_id(p) not in done]
        target = targets[name]
        run = StreamRun(stream, extraction, writer=None, target=target, remaining=len(todo),
                        queued=deque(todo), silver=_silver_target(ctx, stream, target),
                        notes={} if options.full_refresh else state.get_notes(ctx.conn, ctx.instance_id, name))
        progress.planned(name, partitions=len(extraction.partitions), done=len(extraction.partitions) - len(todo))
        ctx.log("info", "stream.planned",
                f"{name}: {len(todo)} of {len(extraction.partitions)} partitions to read"
                + (" (resuming an unfinished extraction)" if extraction.resumed else ""),
                stream=name, extraction_id=extraction.id, partitions=len(extraction.partitions),
                to_read=len(todo), resumed=extraction.resumed, sync_mode=extraction.sync_mode,
                cursor_from=extraction.cursor_from, cursor_to=extraction.cursor_to)
        yield run


def claim_tables(ctx: RunContext, targets: dict[str, BronzeTarget]) -> None:
    """Claim every table the run may write (bronze, quarantine and, with silver, silver; Delta and Postgres)
    for the instance before anything is written; raise ConfigError when another instance owns one."""
    spec, address = ctx.spec, ctx.address
    pg = spec.destinations.postgres
    bronze_setting = "destinations.postgres.bronze_schema" if pg.bronze_schema else "name"
    silver_setting = "destinations.postgres.silver_schema" if pg.silver_schema else "name"
    lake_setting = "destinations.lakehouse.uri" if spec.destinations.lakehouse.uri else "name"
    lakehouse = spec.destinations.lakehouse.uri or ctx.settings.lakehouse_uri
    silver = "silver" in spec.layers
    found: list[locations.Location] = []
    for name, t in targets.items():
        if t.delta_uri:
            found.append(locations.delta_location(t.delta_uri, layer="bronze", stream=name, setting=lake_setting))
            found.append(locations.delta_location(t.quarantine_delta_uri or "", layer="quarantine", stream=name,
                                                  setting=lake_setting))
            if silver:
                uri = address.delta_uri(lakehouse, "silver", address.silver_table(name))
                found.append(locations.delta_location(uri, layer="silver", stream=name, setting=lake_setting))
        if t.postgres_url:
            server = _server(ctx, t.postgres_url)
            found.append(locations.postgres_location(server, t.postgres_schema, t.table, layer="bronze",
                                                     stream=name, setting=bronze_setting))
            found.append(locations.postgres_location(server, t.postgres_schema, t.quarantine_table,
                                                     layer="quarantine", stream=name, setting=bronze_setting))
            if silver:
                found.append(locations.postgres_location(server, pg.silver_schema or address.schema("silver"),
                                                         address.silver_table(name), layer="silver", stream=name,
                                                         setting=silver_setting))
    who = f"instance {spec.name} (tenant {address.tenant}, env {address.env})"
    locations.claim(ctx.conn, ctx.instance_id, spec.source_type, found, who=who)


def _server(ctx: RunContext, url: str) -> str:
    try:
        return ctx.server_of(url)
    except psycopg.Error as exc:
        raise ConfigError(f"the Postgres destination cannot be reached: {ctx.redact(describe_error(exc))}; "
                          "check destinations.postgres.url (or IPAI_DATABASE_URL)") from None


def _extraction(ctx: RunContext, stream: Stream) -> state.Extraction:
    """The stream's open extraction, when it can be resumed; else a new one planned from the stored cursor."""
    name, mode = stream.name, ctx.spec.stream_mode(stream.name)
    if mode == "cdc" and not getattr(stream, "supports_cdc", False):
        raise ConfigError(f"stream {name}: source_type {ctx.spec.source_type!r} has no change log; "
                          "use sync_mode incremental or full")
    full_refresh = ctx.options.full_refresh
    extraction = None if full_refresh else state.open_extraction(ctx.conn, ctx.instance_id, name)
    resumable = getattr(stream, "resumable", None)
    if extraction is not None and resumable is not None and not resumable(extraction.partitions):
        state.abandon_open_extractions(ctx.conn, ctx.instance_id, [name])
        ctx.log("warning", "stream.restarted", f"{name}: the unfinished extraction cannot be resumed "
                "(its source snapshot ended with the run that began it); starting it again", stream=name)
        extraction = None
    if extraction is not None:
        return extraction
    cursor = None
    if mode in ("incremental", "cdc") and not full_refresh:
        cursor = state.get_cursor(ctx.conn, ctx.instance_id, name)
    plan = stream.plan(PlanContext(sync_mode=mode, cursor=cursor, run_started_at=datetime.now(timezone.utc),
                                   secrets=ctx.secrets, options={"secret_store": ctx.store, **ctx.source_options},
                                   instance_id=ctx.instance_id))
    extraction = state.create_extraction(ctx.conn, ctx.instance_id, name, run_id=ctx.run_id, sync_mode=mode,
                                         cursor_from=cursor, plan=plan)
    for warning in plan.warnings:
        ctx.log("warning", "stream.warning", f"{name}: {warning}", stream=name)
    return extraction


def _bronze_target(ctx: RunContext, stream: str) -> BronzeTarget:
    address, dest = ctx.address, ctx.spec.destinations
    table = address.bronze_table(stream)
    delta_uri = None
    if dest.lakehouse.enabled:
        delta_uri = address.delta_uri(dest.lakehouse.uri or ctx.settings.lakehouse_uri, "bronze", table)
    pg_url = None
    if dest.postgres.enabled:
        url = dest.postgres.url
        pg_url = ctx.secrets[url.secret] if isinstance(url, SecretRef) else url or ctx.db.url
        if url is not None:
            _check_destination(ctx, pg_url)
            pg_url = with_tls(pg_url)
    return BronzeTarget(table, delta_uri, pg_url, dest.postgres.bronze_schema or address.schema("bronze"),
                        quarantine=address.quarantine_table(stream))


def _check_destination(ctx: RunContext, url: str) -> None:
    """A Postgres destination on another server than the control plane's is reached only where the egress
    policy allows (IPAI_EGRESS_ALLOW), checked before connecting."""
    where, home = _server_address(url), _server_address(ctx.db.url)
    if where is None or where == home:
        return
    for host in where[0].split(","):
        check_host(host, ctx.source_options["egress"], port=where[1], what="destinations.postgres.url host")


def _server_address(url: str) -> tuple[str, int | None] | None:
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return None
    port = str(params.get("port") or "5432").split(",")[0]
    return str(params.get("host") or "localhost"), int(port) if port.isdigit() else None


def _silver_target(ctx: RunContext, stream: Stream, bronze: BronzeTarget) -> SilverTarget | None:
    if "silver" not in ctx.spec.layers:
        return None
    key = tuple(stream.primary_key) or state.known_key(ctx.conn, ctx.instance_id, stream.name)
    if not key:
        ctx.log("warning", "silver.skipped", f"{stream.name}: the stream has no primary key, so it has no "
                "silver table (bronze keeps every row)", stream=stream.name)
        return None
    return silver_target(ctx.spec, stream.name, address=ctx.address, key=key, cursor=stream.cursor_field,
                         bronze=bronze, lakehouse_uri=ctx.settings.lakehouse_uri)
