"""Checkpoints: a partition is recorded in the state ledger only after its rows are committed to bronze, with what
its reader noted; when a stream's last partition is recorded, its extraction finishes, its cursor advances and the
stream is handed on (to its silver merge).

A driver that dies between a commit and its checkpoint leaves state behind the data, never ahead: the next run
reads those partitions again, and the bronze writers' idempotent commits keep them from being duplicated.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.controlplane import state
from engine.core.faults import crash_point
from engine.core.protocol import Partition
from engine.run.context import RunContext
from engine.run.plan import StreamRun
from engine.run.progress import RunProgress
from engine.run.raytime import describe


class Checkpoints:
    """Records committed partitions and finishes streams; `on_stream_done` gets each finished stream."""

    def __init__(self, ctx: RunContext, progress: RunProgress, *,
                 on_stream_done: Callable[[StreamRun], None]) -> None:
        self.ctx, self.progress, self.on_stream_done = ctx, progress, on_stream_done
        self.notes: dict[Partition, dict[str, dict[str, str]]] = {}  # what readers noted, until recorded

    def keep_notes(self, partition: Partition, notes: dict[str, dict[str, str]]) -> None:
        """Hold what the partition's reader noted, to record it with the partition once committed."""
        self.notes[partition] = notes

    def record(self, run: StreamRun, committed: list[tuple[Partition, int]]) -> None:
        """Record partitions whose rows are committed, as (partition, rows)."""
        ctx = self.ctx
        crash_point(ctx.options.faults, "driver.before_checkpoint", in_driver=True)
        notes = [self.notes.pop(p) for p, _ in committed if p in self.notes]
        state.record_partitions(ctx.conn, ctx.instance_id, run.extraction, ctx.run_id, committed, notes=notes)
        crash_point(ctx.options.faults, "driver.after_checkpoint", in_driver=True)
        run.remaining -= len(committed)
        self.progress.committed(run.stream.name, partitions=len(committed), rows=sum(n for _, n in committed))
        if run.remaining == 0:
            self.finish_stream(run)
        self.progress.show()

    def finish_stream(self, run: StreamRun) -> None:
        """Close the stream's extraction (its cursor advances), let the source confirm it, hand the stream on."""
        ctx = self.ctx
        run.cursor = state.finish_extraction(ctx.conn, ctx.instance_id, run.extraction, ctx.run_id)
        committed = getattr(run.stream, "committed", None)
        if committed is not None:
            try:  # e.g. a CDC slot confirms the cursor; if this fails, the next run's planning does it
                committed(run.cursor, ctx.secrets)
            except Exception as exc:  # noqa: BLE001 - logged; the data and the cursor are already safe
                ctx.log("warning", "stream.confirm_failed", f"{run.stream.name}: {ctx.redact(describe(exc))}",
                        stream=run.stream.name)
        ctx.log("info", "stream.done", f"{run.stream.name}: extraction complete, cursor at {run.cursor}",
                stream=run.stream.name, cursor=run.cursor, rows=self.progress.progress.rows_by_stream[run.stream.name])
        self.on_stream_done(run)
