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

from connectors import connector_for
from engine.controlplane import state
from engine.core.errors import ConfigError
from engine.core.protocol import Partition, PlanContext, Stream
from engine.core.spec import SecretRef, selected_streams
from engine.run.context import RunContext
from engine.run.progress import RunProgress
from layers.bronze.writer import BronzeTarget
from layers.delta import table_uri
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
    if options.full_refresh:
        state.abandon_open_extractions(ctx.conn, ctx.instance_id, names)
    for name in names:
        stream = offered[name]
        extraction = _extraction(ctx, stream)
        done = state.committed_keys(ctx.conn, extraction.id)
        todo = [p for p in extraction.partitions if extraction.commit_id(p) not in done]
        target = _bronze_target(ctx, name)
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
                                   secrets=ctx.secrets, options={"secret_store": ctx.store},
                                   instance_id=ctx.instance_id))
    extraction = state.create_extraction(ctx.conn, ctx.instance_id, name, run_id=ctx.run_id, sync_mode=mode,
                                         cursor_from=cursor, plan=plan)
    for warning in plan.warnings:
        ctx.log("warning", "stream.warning", f"{name}: {warning}", stream=name)
    return extraction


def _bronze_target(ctx: RunContext, stream: str) -> BronzeTarget:
    table = f"raw_{ctx.spec.name}_{stream}"
    dest = ctx.spec.destinations
    delta_uri = None
    if dest.lakehouse.enabled:
        delta_uri = table_uri(dest.lakehouse.uri or ctx.settings.lakehouse_uri, "bronze", table)
    pg_url = None
    if dest.postgres.enabled:
        url = dest.postgres.url
        pg_url = ctx.secrets[url.secret] if isinstance(url, SecretRef) else url or ctx.db.url
    return BronzeTarget(table, delta_uri, pg_url, dest.postgres.bronze_schema)


def _silver_target(ctx: RunContext, stream: Stream, bronze: BronzeTarget) -> SilverTarget | None:
    if "silver" not in ctx.spec.layers:
        return None
    key = tuple(stream.primary_key) or state.known_key(ctx.conn, ctx.instance_id, stream.name)
    if not key:
        ctx.log("warning", "silver.skipped", f"{stream.name}: the stream has no primary key, so it has no "
                "silver table (bronze keeps every row)", stream=stream.name)
        return None
    return silver_target(ctx.spec, stream.name, key=key, cursor=stream.cursor_field, bronze=bronze,
                         lakehouse_uri=ctx.settings.lakehouse_uri)
