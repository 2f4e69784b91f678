"""The read/write loop: planned partitions run as Ray read tasks, their Arrow tables go to one bronze writer actor
per table, and what a writer commits is checkpointed.

    queued partitions -> read tasks (bounded in flight and by rows buffered, ray.wait) -> pending per stream
    -> batched writes (a few large commits, not one per partition; idempotent per partition) -> checkpoints

Reads are interleaved across streams. A read whose source parks the run (quota) stops the loop (`deferred`);
`drain` keeps what was read or is being written when the run stops early.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import ray

from engine.core.errors import RunFailed, SourceDeferred, TransientError
from engine.core.protocol import Partition, ReadContext, Stream
from engine.run.checkpoint import Checkpoints
from engine.run.context import RunContext
from engine.run.plan import StreamRun
from engine.run.progress import HEARTBEAT_S, RunProgress
from engine.run.raytime import cluster_cpus, describe, read_partition
from layers.bronze.writer import Ack, BronzeWriter

WRITES_IN_FLIGHT = 2  # per writer: one committing, one queued behind it
COMMIT_AFTER_S = 5.0  # an idle writer commits a small batch once it has waited this long


class ReadWriteLoop:
    """Schedules the reads and writes of a run's streams (`streams`, filled by planning) until all are recorded."""

    def __init__(self, ctx: RunContext, streams: dict[str, StreamRun], checkpoints: Checkpoints,
                 progress: RunProgress) -> None:
        self.ctx, self.streams, self.checkpoints, self.progress = ctx, streams, checkpoints, progress
        self.reads: dict[Any, tuple[StreamRun, Partition, Any]] = {}  # rows ref -> (stream, partition, table ref)
        self.writes: dict[Any, tuple[StreamRun, list[tuple[Partition, Any, int]]]] = {}
        self.deferred: SourceDeferred | None = None

    # -- writers ---------------------------------------------------------------------------------------

    def start_writers(self) -> None:
        """Start one bronze writer actor per stream with partitions to read."""
        actor_cls = ray.remote(BronzeWriter)
        for run in self.streams.values():
            if run.queued:
                run.writer = actor_cls.options(
                    name=f"bronze {run.target.table} {self.ctx.run_id[:8]}", num_cpus=0,
                    max_restarts=4, max_task_retries=4,
                ).remote(run.target, self.ctx.options.faults)

    def stop_writers(self) -> None:
        """Close the writers (their last commits are done), killing any that cannot close."""
        for run in self.streams.values():
            if run.writer is not None:
                try:
                    ray.get(run.writer.close.remote(), timeout=30)
                except Exception:  # noqa: BLE001 - a writer that cannot close is killed below anyway
                    pass
                ray.kill(run.writer)
                run.writer = None

    def kill_writers(self) -> None:
        """Kill the writers at once, mid-write if need be (as when the driver process dies)."""
        for run in self.streams.values():
            if run.writer is not None:
                ray.kill(run.writer)
                run.writer = None

    # -- the loop --------------------------------------------------------------------------------------

    def run(self) -> None:
        """Read and write until every partition is recorded, or a source defers the run (`deferred`)."""
        cpus = cluster_cpus() if ray.is_initialized() else 1
        # Reads that mostly wait on the network ask Ray for less than a CPU each, so more run at once.
        task_cpus = min(_task_cpus(r.stream) for r in self.streams.values()) if self.streams else 1.0
        max_reads = self.ctx.spec.tuning.max_in_flight or max(1, round(2 * cpus / task_cpus))
        commit_rows = self.ctx.spec.tuning.commit_rows
        buffer_limit = 4 * commit_rows
        order = deque(r for r in self.streams.values() if r.queued)
        while any(r.remaining for r in self.streams.values()) and self.deferred is None:
            buffered = sum(r.pending_rows for r in self.streams.values()) + sum(
                n for _, batch in self.writes.values() for _, _, n in batch)
            while order and len(self.reads) < max_reads and buffered < buffer_limit:
                run = order.popleft()
                self._submit_read(run, run.queued.popleft())
                if run.queued:
                    order.append(run)
            for run in self.streams.values():
                if run.pending and run.writing < WRITES_IN_FLIGHT and (
                    (run.writing == 0 and _worth_a_commit(run, commit_rows)) or run.pending_rows >= commit_rows
                    or (not run.queued and not run.reading)
                ):
                    self._submit_write(run)
            refs = list(self.reads) + list(self.writes)
            if not refs:
                raise RuntimeError("driver stalled: partitions remain but nothing is running")  # a bug, not input
            ready, _ = ray.wait(refs, num_returns=1, timeout=HEARTBEAT_S)
            for ref in ready:
                if ref in self.reads:
                    self._read_done(ref)
                else:
                    self._write_done(ref)
            self.progress.beat()

    def _submit_read(self, run: StreamRun, partition: Partition) -> None:
        ctx, ext = self.ctx, run.extraction
        read_ctx = ReadContext(run_id=ctx.run_id, instance_id=ctx.instance_id, secrets=ctx.secrets,
                               options={"secret_store": ctx.store, "notes": run.notes, **ctx.source_options})
        refs: Any = read_partition.options(
            num_cpus=_task_cpus(run.stream),
            name=f"read {ctx.spec.name}.{run.stream.name} {partition.label}",
            max_retries=ctx.spec.tuning.read_retries, retry_exceptions=[TransientError],
        ).remote(run.stream, partition, read_ctx, ext.id, ext.partition_no(partition), ctx.options.faults)
        table_ref, rows_ref = refs  # num_returns=2
        self.reads[rows_ref] = (run, partition, table_ref)
        run.reading += 1

    def _read_done(self, rows_ref: Any) -> None:
        run, partition, table_ref = self.reads.pop(rows_ref)
        run.reading -= 1
        try:
            rows, notes = ray.get(rows_ref)
        except Exception as exc:  # noqa: BLE001 - reported with the partition it belongs to
            cause = getattr(exc, "cause", None)
            if isinstance(cause, SourceDeferred):
                # Stop reading; what is read or being written is kept, the rest waits for the reset.
                self.deferred = cause
                run.queued.appendleft(partition)
                return
            raise RunFailed(f"stream {run.stream.name}, partition {partition.key}: "
                            f"{self.ctx.redact(describe(exc))}", run_id=self.ctx.run_id) from None
        if notes:
            self.checkpoints.keep_notes(partition, notes)
        if rows == 0:
            self.checkpoints.record(run, [(partition, 0)])
        else:
            if not run.pending:
                run.pending_since = time.monotonic()
            run.pending.append((partition, table_ref, rows))

    def _submit_write(self, run: StreamRun) -> None:
        batch, run.pending = run.pending, []
        ext = run.extraction
        ref = run.writer.write.options(name=f"write {self.ctx.spec.name}.{run.stream.name}").remote(
            [ext.commit_id(p) for p, _, _ in batch], *[t for _, t, _ in batch])
        self.writes[ref] = (run, batch)
        run.writing += 1

    def _write_done(self, ref: Any) -> None:
        ctx = self.ctx
        run, batch = self.writes.pop(ref)
        run.writing -= 1
        try:
            acks: list[Ack] = ray.get(ref)
        except Exception as exc:  # noqa: BLE001
            keys = ", ".join(p.key for p, _, _ in batch[:3])
            raise RunFailed(f"stream {run.stream.name}: writing {run.target.table} failed for partitions {keys}"
                            f"{' ...' if len(batch) > 3 else ''}: {describe(exc)}", run_id=ctx.run_id) from None
        quarantined = sum(a.quarantined for a in acks)
        if quarantined:
            reasons: dict[str, int] = {}
            for a in acks:
                for reason, n in a.reasons.items():
                    reasons[reason] = reasons.get(reason, 0) + n
            self.progress.count(run.stream.name, bronze_quarantined=quarantined)
            said = "; ".join(f"{n} x {r}" for r, n in reasons.items())
            ctx.log("warning", "bronze.quarantined", f"{run.stream.name}: {quarantined} rows did not fit "
                    f"{run.target.table}'s column types and were set aside in {run.target.quarantine_table}: "
                    f"{ctx.redact(said)}", stream=run.stream.name, quarantined=quarantined, reasons=reasons)
        self.checkpoints.record(run, [(p, a.rows) for (p, _, _), a in zip(batch, acks, strict=True)])

    # -- stopping early --------------------------------------------------------------------------------

    def drain(self) -> None:
        """Stop reading; commit what was read and let writes under way finish, recording them, so their work
        is kept (after Ctrl-C, or when the source parks the run)."""
        self._collect_finished_reads()
        self.cancel_reads()
        for run in self.streams.values():
            if run.pending and run.writer is not None:
                self._submit_write(run)
        deadline = time.monotonic() + 30
        while self.writes and time.monotonic() < deadline:
            try:
                ready, _ = ray.wait(list(self.writes), num_returns=1, timeout=1.0)
                for ref in ready:
                    self._write_done(ref)
            except KeyboardInterrupt:
                break
            except RunFailed:
                continue

    def _collect_finished_reads(self) -> None:
        """Take in reads that finished but were not collected yet: cancelling them would throw their pages
        away and spend the source's quota again on the next run."""
        if not self.reads:
            return
        ready, _ = ray.wait(list(self.reads), num_returns=len(self.reads), timeout=0)
        for ref in ready:
            try:
                self._read_done(ref)
            except RunFailed:
                continue  # a failed partition stays unrecorded; the next run reads it again

    def cancel_reads(self) -> None:
        """Stop read tasks still running: their partitions stay unrecorded and are read by the next run."""
        for _, _, table_ref in self.reads.values():
            ray.cancel(table_ref, force=True)
        self.reads.clear()


def _worth_a_commit(run: StreamRun, commit_rows: int) -> bool:
    """An idle writer commits what is pending once it is a tenth of `commit_rows` or has waited a few
    seconds: slow sources (APIs with latency) then make a few large commits, not one per partition."""
    return run.pending_rows >= commit_rows // 10 or time.monotonic() - run.pending_since >= COMMIT_AFTER_S


def _task_cpus(stream: Stream) -> float:
    """CPUs a read task of `stream` asks Ray for: 1, unless the stream says its reads wait on I/O."""
    return float(getattr(stream, "task_cpus", 1.0))
