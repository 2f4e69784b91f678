"""The driver: one per run. Plans partitions, runs them as Ray tasks, hands their Arrow tables to one
bronze writer actor per table, and checkpoints each partition only after its data is committed.

    plan (per stream, from state) -> read tasks (bounded in flight, ray.wait) -> writer actors
    (batched Delta commit + Postgres load, idempotent per partition) -> ack -> connector_state ->
    stream done -> cursor advances -> run row updated
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NoReturn

import psycopg
import ray

from connectors import connector_for
from engine.controlplane import records
from engine.controlplane import state
from engine.controlplane import webhooks
from engine.controlplane.settings import Settings
from engine.controlplane.db import Database, migrate
from engine.core.errors import (
    ConfigError, IpaiError, LeaseLost, RunCancelled, RunDeferred, RunFailed, SourceDeferred, TransientError,
)
from engine.core.faults import DriverCrash, FaultPlan, crash_point
from engine.core.protocol import Partition, PlanContext, ReadContext, Stream
from engine.run.raytime import cluster_cpus, ensure_ray, merge_silver, read_partition
from engine.core.secrets import Redactor
from engine.controlplane.vault import VaultSecretStore, vault_key
from engine.core.secrets import resolve as resolve_secrets
from engine.core.spec import ConnectorSpec, SecretRef, redact_url, selected_streams
from layers.bronze.writer import Ack, BronzeTarget, BronzeWriter
from layers.delta import table_uri
from layers.silver.target import Merge, SilverResult, SilverTarget
from layers.silver.delta import DeltaSilverTable

HEARTBEAT_S = 1.0
WRITES_IN_FLIGHT = 2  # per writer: one committing, one queued behind it
COMMIT_AFTER_S = 5.0  # an idle writer commits a small batch once it has waited this long


@dataclass(frozen=True)
class RunOptions:
    """How a run was asked for (not part of the spec)."""

    full_refresh: bool = False
    trigger: str = "cli"
    dashboard: bool = False
    lease_seconds: float = 120.0
    """An active run whose heartbeat is older than this is taken as dead and marked failed."""
    faults: FaultPlan | None = None


@dataclass
class Progress:
    """A snapshot of a run for progress displays."""

    run_id: str
    partitions_total: int = 0
    partitions_done: int = 0
    rows: int = 0
    rows_by_stream: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    @property
    def rows_per_second(self) -> float:
        return self.rows / max(1e-6, time.monotonic() - self.started)


@dataclass(frozen=True)
class TableLocation:
    stream: str
    delta_uri: str | None
    postgres_table: str | None
    cursor: Any
    silver_delta_uri: str | None = None
    silver_postgres_table: str | None = None


@dataclass(frozen=True)
class RunResult:
    run_id: str
    instance_id: str
    status: str
    rows: int
    rows_by_stream: dict[str, int]
    partitions: int
    seconds: float
    tables: list[TableLocation]


@dataclass
class _StreamRun:
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


def run_sync(
    spec: ConnectorSpec, yaml_text: str, *, db: Database, settings: Settings, options: RunOptions = RunOptions(),
    on_progress: Callable[[Progress], None] | None = None,
) -> RunResult:
    """Run one sync of `spec` to completion; raise RunFailed / RunCancelled with the run id on failure."""
    instance_id, run_id = prepare_run(spec, yaml_text, db=db, options=options)
    return execute_run(spec, db=db, settings=settings, options=options, instance_id=instance_id, run_id=run_id,
                       on_progress=on_progress)


def prepare_run(spec: ConnectorSpec, yaml_text: str, *, db: Database, options: RunOptions) -> tuple[str, str]:
    """Register the spec and create its run row; return (instance id, run id).

    Raises RunConflict with the active run's id when the instance is already running.
    """
    with db.connect() as conn:
        migrate(conn)
        reg = records.register(conn, spec, yaml_text)
        _expire_stale_run(conn, reg.instance_id)
        run_id = records.start_run(conn, reg.instance_id, reg.definition_id, trigger=options.trigger,
                                   full_refresh=options.full_refresh, lease_seconds=options.lease_seconds)
    return reg.instance_id, run_id


def execute_run(
    spec: ConnectorSpec, *, db: Database, settings: Settings, options: RunOptions, instance_id: str, run_id: str,
    on_progress: Callable[[Progress], None] | None = None,
) -> RunResult:
    """Execute a run prepared by `prepare_run` (possibly in another process)."""
    conn = db.connect()
    try:
        return _Run(spec, conn, db, settings, options, instance_id, run_id, on_progress).execute()
    finally:
        conn.close()


def _expire_stale_run(conn: psycopg.Connection[Any], instance_id: str) -> None:
    conn.execute(
        "update connector_runs set status = 'failed', ended_at = now(),"
        " error = 'lease expired: the driver stopped heartbeating; the next run resumes from committed state'"
        " where instance_id = %s and status = 'running' and lease_expires_at < now()",
        (instance_id,),
    )


class _Run:
    def __init__(
        self, spec: ConnectorSpec, conn: psycopg.Connection[Any], db: Database, settings: Settings,
        options: RunOptions, instance_id: str, run_id: str, on_progress: Callable[[Progress], None] | None,
    ) -> None:
        self.spec, self.conn, self.db, self.settings, self.options = spec, conn, db, settings, options
        self.instance_id, self.run_id = instance_id, run_id
        self.on_progress = on_progress
        self.progress = Progress(run_id)
        self.streams: dict[str, _StreamRun] = {}
        self.reads: dict[Any, tuple[_StreamRun, Partition, Any]] = {}  # rows ref -> (stream, partition, table ref)
        self.writes: dict[Any, tuple[_StreamRun, list[tuple[Partition, Any, int]]]] = {}
        self.silver_jobs: dict[Any, tuple[_StreamRun, list[Merge]]] = {}  # silver merge ref -> (stream, extractions)
        self.metrics: dict[str, dict[str, int]] = {}  # stream -> counters kept on the run row (connector_runs.metrics)
        self.timings: dict[str, float] = {}
        self.last_beat = 0.0
        tenant = conn.execute("select tenant_id from connector_runs where id = %s", (run_id,)).fetchone()
        self.store = VaultSecretStore(db.url, run_id, str(tenant[0]) if tenant else "",
                                      key=db.session.get("ipai.vault_key") or vault_key(settings.home))
        self.secrets: dict[str, str] = {}
        self.hooks: tuple[webhooks.Target, ...] = ()
        self.redact = Redactor(())
        self.deferred: SourceDeferred | None = None
        self.notes: dict[Partition, dict[str, dict[str, str]]] = {}

    def log(self, level: str, event: str, message: str, **fields: Any) -> None:
        records.log(self.conn, self.run_id, level, event, message, **fields)

    def execute(self) -> RunResult:
        t0 = time.monotonic()
        current: str = "planning"
        lease = _Lease(self.db, self.run_id, self.options.lease_seconds)
        try:
            self.log("info", "run.started", f"run of {self.spec.name} ({self.spec.source_type}) started",
                     full_refresh=self.options.full_refresh, trigger=self.options.trigger)
            # Signing keys first, so a run that fails on a source secret is still announced; readers get
            # only the source's secrets.
            self.hooks = webhooks.prepare(self.spec, self.store)
            self.secrets = resolve_secrets(self.spec.model_copy(update={"webhooks": ()}), self.store)
            self.redact = Redactor.of([*self.secrets.values(), *(h.key for h in self.hooks)])
            if connector_for(self.spec).plans_with_ray:
                self._connect_ray()
            self._plan()
            self.timings["plan_s"] = round(time.monotonic() - t0, 3)
            current = "reading"
            if any(s.queued for s in self.streams.values()):
                self._connect_ray()
                self._start_writers()
            self._loop()
            if self.deferred is not None:
                self._defer(self.deferred, t0)
            current = "building silver"
            self._build_silver()
            self._apply_gold()
            self.timings["total_s"] = round(time.monotonic() - t0, 3)
            self._save_progress()
            records.finish_run(self.conn, self.run_id, status="succeeded", timings=self.timings,
                               metrics=self.metrics)
            self.log("info", "run.succeeded", f"{self.progress.rows} rows in {self.timings['total_s']} s",
                     rows=self.progress.rows, rows_by_stream=self.progress.rows_by_stream)
            result = self._result("succeeded", t0)
            self._announce()
            return result
        except KeyboardInterrupt:
            self._drain_writes()
            msg = "cancelled by the user; committed partitions stay committed and the next run resumes"
            self._end("cancelled", msg, t0)
            raise RunCancelled(f"run {self.run_id} {msg}", run_id=self.run_id) from None
        except DriverCrash:
            # Stands for the driver process dying: its actors die with it, mid-write if need be.
            for run in self.streams.values():
                if run.writer is not None:
                    ray.kill(run.writer)
                    run.writer = None
            raise
        except RunDeferred:
            raise
        except SourceDeferred as exc:  # raised while planning; a read's deferral ends the loop instead
            self._defer(exc, t0)
        except IpaiError as exc:
            msg = self.redact(str(exc))
            self._end("failed", msg, t0)
            raise RunFailed(f"run {self.run_id} failed while {current}: {msg}", run_id=self.run_id) from None
        except Exception as exc:  # noqa: BLE001 - every other failure is reported on the run, then raised as ours
            msg = self.redact(_describe(exc))
            self._end("failed", msg, t0)
            raise RunFailed(f"run {self.run_id} failed while {current}: {msg}", run_id=self.run_id) from None
        finally:
            lease.stop()
            self._stop_writers()
            for run in self.streams.values():
                release = getattr(run.stream, "release", None)
                if release is not None:
                    release()

    def _connect_ray(self) -> None:
        if "ray_connect_s" in self.timings:
            return
        t_ray = time.monotonic()
        ensure_ray(self.settings.ray_address, dashboard=self.options.dashboard)
        self.timings["ray_connect_s"] = round(time.monotonic() - t_ray, 3)

    def _defer(self, exc: SourceDeferred, t0: float) -> NoReturn:
        """Park the run until the source's quota resets: committed partitions stay, the extraction stays open."""
        until = datetime.fromtimestamp(exc.until, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        msg = self.redact(f"deferred until {until}: {exc}")
        self._drain_writes()
        self.timings["total_s"] = round(time.monotonic() - t0, 3)
        self._save_progress()
        records.finish_run(self.conn, self.run_id, status="deferred", error=msg, timings=self.timings,
                           metrics=self.metrics,
                           deferred_until=exc.until)
        self.log("warning", "run.deferred", msg, until=exc.until)
        self._announce()
        raise RunDeferred(f"run {self.run_id} {msg}; run it again after that time to resume",
                          run_id=self.run_id, until=exc.until)

    # -- planning -------------------------------------------------------------------------------------

    def _plan(self) -> None:
        connector = connector_for(self.spec)
        offered = {s.name: s for s in connector.streams(self.spec)}
        try:
            names = selected_streams(self.spec, list(offered))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.options.full_refresh:
            state.abandon_open_extractions(self.conn, self.instance_id, names)
        for name in names:
            stream = offered[name]
            mode = self.spec.stream_mode(name)
            if mode == "cdc" and not getattr(stream, "supports_cdc", False):
                raise ConfigError(f"stream {name}: source_type {self.spec.source_type!r} has no change log; "
                                  "use sync_mode incremental or full")
            extraction = None if self.options.full_refresh else state.open_extraction(
                self.conn, self.instance_id, name)
            resumable = getattr(stream, "resumable", None)
            if extraction is not None and resumable is not None and not resumable(extraction.partitions):
                state.abandon_open_extractions(self.conn, self.instance_id, [name])
                self.log("warning", "stream.restarted", f"{name}: the unfinished extraction cannot be resumed "
                         "(its source snapshot ended with the run that began it); starting it again", stream=name)
                extraction = None
            if extraction is None:
                cursor = None
                if mode in ("incremental", "cdc") and not self.options.full_refresh:
                    cursor = state.get_cursor(self.conn, self.instance_id, name)
                plan = stream.plan(PlanContext(sync_mode=mode, cursor=cursor,
                                               run_started_at=datetime.now(timezone.utc), secrets=self.secrets,
                                               options={"secret_store": self.store}, instance_id=self.instance_id))
                extraction = state.create_extraction(self.conn, self.instance_id, name, run_id=self.run_id,
                                                     sync_mode=mode, cursor_from=cursor, plan=plan)
                for warning in plan.warnings:
                    self.log("warning", "stream.warning", f"{name}: {warning}", stream=name)
            done = state.committed_keys(self.conn, extraction.id)
            todo = [p for p in extraction.partitions if extraction.commit_id(p) not in done]
            target = self._target(name)
            run = _StreamRun(stream, extraction, writer=None, target=target, remaining=len(todo),
                             queued=deque(todo), silver=self._silver_target(stream, target),
                             notes={} if self.options.full_refresh else state.get_notes(self.conn, self.instance_id, name))
            self.streams[name] = run
            self.progress.partitions_total += len(extraction.partitions)
            self.progress.partitions_done += len(extraction.partitions) - len(todo)
            self.progress.rows_by_stream[name] = 0
            self.log("info", "stream.planned",
                     f"{name}: {len(todo)} of {len(extraction.partitions)} partitions to read"
                     + (" (resuming an unfinished extraction)" if extraction.resumed else ""),
                     stream=name, extraction_id=extraction.id, partitions=len(extraction.partitions),
                     to_read=len(todo), resumed=extraction.resumed, sync_mode=extraction.sync_mode,
                     cursor_from=extraction.cursor_from, cursor_to=extraction.cursor_to)
            if not todo:
                self._finish_stream(run)

    def _target(self, stream: str) -> BronzeTarget:
        table = f"raw_{self.spec.name}_{stream}"
        dest = self.spec.destinations
        delta_uri = None
        if dest.lakehouse.enabled:
            delta_uri = table_uri(dest.lakehouse.uri or self.settings.lakehouse_uri, "bronze", table)
        pg_url = None
        if dest.postgres.enabled:
            url = dest.postgres.url
            pg_url = self.secrets[url.secret] if isinstance(url, SecretRef) else url or self.db.url
        return BronzeTarget(table, delta_uri, pg_url, dest.postgres.bronze_schema)

    def _silver_target(self, stream: Stream, bronze: BronzeTarget) -> SilverTarget | None:
        if "silver" not in self.spec.layers:
            return None
        key = tuple(stream.primary_key) or state.known_key(self.conn, self.instance_id, stream.name)
        if not key:
            self.log("warning", "silver.skipped", f"{stream.name}: the stream has no primary key, so it has no "
                     "silver table (bronze keeps every row)", stream=stream.name)
            return None
        table = f"{self.spec.name}_{stream.name}"
        lakehouse = self.spec.destinations.lakehouse.uri or self.settings.lakehouse_uri
        delta = bronze.delta_uri is not None
        partition_by = self.spec.silver_options(stream.name).partition_by
        if delta:
            problem = DeltaSilverTable(table_uri(lakehouse, "silver", table), key, partition_by).layout_problem()
            if problem:
                raise ConfigError(f"stream {stream.name}: {problem}; run `ipai silver rebuild {self.spec.name} "
                                  f"--stream {stream.name}` to lay it out again from bronze (bronze and cursors stay)")
        return SilverTarget(
            table=table, key=key, cursor=stream.cursor_field, bronze_table=bronze.table,
            delta_uri=table_uri(lakehouse, "silver", table) if delta else None,
            bronze_delta_uri=bronze.delta_uri,
            quarantine_delta_uri=table_uri(lakehouse, "bronze", f"quarantine_{table}") if delta else None,
            postgres_url=bronze.postgres_url, postgres_schema=self.spec.destinations.postgres.silver_schema,
            bronze_postgres_schema=bronze.postgres_schema,
            partition_by=partition_by,
            flatten=tuple((f.column, f.path, f.type) for f in self.spec.silver_options(stream.name).flatten),
        )

    # -- running --------------------------------------------------------------------------------------

    def _start_writers(self) -> None:
        actor_cls = ray.remote(BronzeWriter)
        for name, run in self.streams.items():
            if run.queued:
                run.writer = actor_cls.options(
                    name=f"bronze {run.target.table} {self.run_id[:8]}", num_cpus=0,
                    max_restarts=4, max_task_retries=4,
                ).remote(run.target, self.options.faults)

    def _stop_writers(self) -> None:
        for run in self.streams.values():
            if run.writer is not None:
                try:
                    ray.get(run.writer.close.remote(), timeout=30)
                except Exception:  # noqa: BLE001 - a writer that cannot close is killed below anyway
                    pass
                ray.kill(run.writer)
                run.writer = None

    def _loop(self) -> None:
        cpus = cluster_cpus() if ray.is_initialized() else 1
        # Reads that mostly wait on the network ask Ray for less than a CPU each, so more run at once.
        task_cpus = min(_task_cpus(r.stream) for r in self.streams.values()) if self.streams else 1.0
        max_reads = self.spec.tuning.max_in_flight or max(1, round(2 * cpus / task_cpus))
        commit_rows = self.spec.tuning.commit_rows
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
                    (run.writing == 0 and self._worth_a_commit(run, commit_rows)) or run.pending_rows >= commit_rows
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
            self._beat()

    def _submit_read(self, run: _StreamRun, partition: Partition) -> None:
        ext = run.extraction
        ctx = ReadContext(run_id=self.run_id, instance_id=self.instance_id, secrets=self.secrets,
                          options={"secret_store": self.store, "notes": run.notes})
        refs: Any = read_partition.options(
            num_cpus=_task_cpus(run.stream),
            name=f"read {self.spec.name}.{run.stream.name} {partition.label}",
            max_retries=self.spec.tuning.read_retries, retry_exceptions=[TransientError],
        ).remote(run.stream, partition, ctx, ext.id, ext.partition_no(partition), self.options.faults)
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
                            f"{self.redact(_describe(exc))}", run_id=self.run_id) from None
        if notes:
            self.notes[partition] = notes
        if rows == 0:
            self._checkpoint(run, [(partition, 0)])
        else:
            if not run.pending:
                run.pending_since = time.monotonic()
            run.pending.append((partition, table_ref, rows))

    @staticmethod
    def _worth_a_commit(run: _StreamRun, commit_rows: int) -> bool:
        """An idle writer commits what is pending once it is a tenth of `commit_rows` or has waited a few
        seconds: slow sources (APIs with latency) then make a few large commits, not one per partition."""
        return run.pending_rows >= commit_rows // 10 or time.monotonic() - run.pending_since >= COMMIT_AFTER_S

    def _submit_write(self, run: _StreamRun) -> None:
        batch, run.pending = run.pending, []
        ext = run.extraction
        ref = run.writer.write.options(name=f"write {self.spec.name}.{run.stream.name}").remote(
            [ext.commit_id(p) for p, _, _ in batch], *[t for _, t, _ in batch])
        self.writes[ref] = (run, batch)
        run.writing += 1

    def _write_done(self, ref: Any) -> None:
        run, batch = self.writes.pop(ref)
        run.writing -= 1
        try:
            acks: list[Ack] = ray.get(ref)
        except Exception as exc:  # noqa: BLE001
            keys = ", ".join(p.key for p, _, _ in batch[:3])
            raise RunFailed(f"stream {run.stream.name}: writing {run.target.table} failed for partitions {keys}"
                            f"{' ...' if len(batch) > 3 else ''}: {_describe(exc)}", run_id=self.run_id) from None
        quarantined = sum(a.quarantined for a in acks)
        if quarantined:
            reasons: dict[str, int] = {}
            for a in acks:
                for reason, n in a.reasons.items():
                    reasons[reason] = reasons.get(reason, 0) + n
            self._count(run.stream.name, bronze_quarantined=quarantined)
            said = "; ".join(f"{n} x {r}" for r, n in reasons.items())
            self.log("warning", "bronze.quarantined", f"{run.stream.name}: {quarantined} rows did not fit "
                     f"{run.target.table}'s column types and were set aside in {run.target.quarantine_table}: "
                     f"{self.redact(said)}", stream=run.stream.name, quarantined=quarantined, reasons=reasons)
        self._checkpoint(run, [(p, a.rows) for (p, _, _), a in zip(batch, acks, strict=True)])

    def _checkpoint(self, run: _StreamRun, committed: list[tuple[Partition, int]]) -> None:
        crash_point(self.options.faults, "driver.before_checkpoint", in_driver=True)
        notes = [self.notes.pop(p) for p, _ in committed if p in self.notes]
        state.record_partitions(self.conn, self.instance_id, run.extraction, self.run_id, committed, notes=notes)
        crash_point(self.options.faults, "driver.after_checkpoint", in_driver=True)
        rows = sum(n for _, n in committed)
        run.remaining -= len(committed)
        self.progress.partitions_done += len(committed)
        self.progress.rows += rows
        self.progress.rows_by_stream[run.stream.name] += rows
        if run.remaining == 0:
            self._finish_stream(run)
        if self.on_progress:
            self.on_progress(self.progress)

    def _finish_stream(self, run: _StreamRun) -> None:
        run.cursor = state.finish_extraction(self.conn, self.instance_id, run.extraction, self.run_id)
        committed = getattr(run.stream, "committed", None)
        if committed is not None:
            try:  # e.g. a CDC slot confirms the cursor; if this fails, the next run's planning does it
                committed(run.cursor, self.secrets)
            except Exception as exc:  # noqa: BLE001 - logged; the data and the cursor are already safe
                self.log("warning", "stream.confirm_failed", f"{run.stream.name}: {self.redact(_describe(exc))}",
                         stream=run.stream.name)
        self.log("info", "stream.done", f"{run.stream.name}: extraction complete, cursor at {run.cursor}",
                 stream=run.stream.name, cursor=run.cursor, rows=self.progress.rows_by_stream[run.stream.name])
        self._submit_silver(run)

    def _save_progress(self) -> None:
        """Persist progress and renew the lease (raises LeaseLost if the run was taken from us)."""
        records.update_progress(self.conn, self.run_id, rows=self.progress.rows,
                                partitions_done=self.progress.partitions_done,
                                partitions_total=self.progress.partitions_total,
                                rows_by_stream=self.progress.rows_by_stream,
                                lease_seconds=self.options.lease_seconds)

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

    def _submit_silver(self, run: _StreamRun) -> None:
        """Start merging the stream's finished, unmerged extractions into silver (a Ray task), while other
        streams are still read."""
        if run.silver is None or any(r is run for r, _ in self.silver_jobs.values()):
            return
        pending = state.unmerged_extractions(self.conn, self.instance_id, run.stream.name)
        if pending:
            self._connect_ray()
            ref = merge_silver.options(name=f"silver {run.silver.table}").remote(run.silver, pending, self.run_id)
            self.silver_jobs[ref] = (run, pending)

    def _build_silver(self) -> None:
        """Wait for the silver merges, after starting those of streams with a backlog (a run that stopped
        before merging, or silver turned on later)."""
        for run in self.streams.values():
            self._submit_silver(run)
        t0 = time.monotonic()
        while self.silver_jobs:
            ready, _ = ray.wait(list(self.silver_jobs), num_returns=1, timeout=HEARTBEAT_S)
            for ref in ready:
                run, pending = self.silver_jobs.pop(ref)
                self._silver_done(ref, run, pending)
            self._beat()
        if self.streams:
            self.timings["silver_wait_s"] = round(time.monotonic() - t0, 3)

    def _count(self, stream: str, **counts: int) -> None:
        kept = self.metrics.setdefault(stream, {})
        for name, n in counts.items():
            kept[name] = kept.get(name, 0) + n

    def _apply_gold(self) -> None:
        """Keep the gold views in place (`layers` with gold): the shipped definitions are (re)applied to the
        Postgres destination. A view that cannot be applied is a warning on the run, never its failure."""
        if "gold" not in self.spec.layers or not self.spec.destinations.postgres.enabled:
            return
        from layers.gold.apply import apply_gold

        url = next((r.target.postgres_url for r in self.streams.values() if r.target.postgres_url), None)
        if url is None:
            return
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                result = apply_gold(conn)
        except (IpaiError, psycopg.Error) as exc:
            self.log("warning", "gold.failed", f"gold views not applied: {self.redact(str(exc))}")
            return
        self.log("info", "gold.applied", f"{len(result.applied)} gold views current"
                 + (f"; {len(result.skipped)} wait for their silver tables" if result.skipped else ""),
                 applied=list(result.applied), skipped=[str(s) for s in result.skipped])
        for failure in result.failed:
            self.log("warning", "gold.failed", f"gold view {failure.view} not applied: {failure}", view=failure.view)

    def _silver_done(self, ref: Any, run: _StreamRun, pending: list[Merge]) -> None:
        name, table = run.stream.name, run.silver.table if run.silver else ""
        try:
            result: SilverResult = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - reported with the table it concerns
            raise RunFailed(f"stream {name}: merging into silver {table} failed: {self.redact(_describe(exc))}; "
                            "bronze and the cursor are kept, and the next run merges again",
                            run_id=self.run_id) from None
        state.mark_merged(self.conn, pending)
        self._count(name, silver_rows=result.rows_merged, silver_deleted=result.missing_deleted,
                    silver_quarantined=result.quarantined)
        self.log("info", "silver.merged", f"{name}: {result.rows_merged} rows merged into silver {table} "
                 f"({result.rows_in} read from bronze) in {result.seconds} s"
                 + (f"; {result.missing_deleted} keys the source no longer has marked deleted"
                    if result.missing_deleted else ""),
                 stream=name, rows_in=result.rows_in, rows_merged=result.rows_merged, extractions=len(pending),
                 missing_deleted=result.missing_deleted, changes=result.changes, seconds=result.seconds)
        if result.quarantined:
            reasons = "; ".join(f"{n} x {r}" for r, n in result.reasons.items())
            self.log("warning", "silver.quarantined", f"{name}: {result.quarantined} rows set aside in bronze "
                     f"quarantine_{table}: {reasons}", stream=name, quarantined=result.quarantined,
                     reasons=result.reasons)

    def _cancel_reads(self) -> None:
        """Stop read tasks still running: their partitions stay unrecorded and are read by the next run."""
        for _, _, table_ref in self.reads.values():
            ray.cancel(table_ref, force=True)
        self.reads.clear()

    def _beat(self) -> None:
        now = time.monotonic()
        if now - self.last_beat < HEARTBEAT_S:
            return
        self.last_beat = now
        self._save_progress()
        if self.on_progress:
            self.on_progress(self.progress)

    # -- ending ---------------------------------------------------------------------------------------

    def _drain_writes(self) -> None:
        """Stop reading; commit what was read and let writes under way finish, recording them, so their work
        is kept (after Ctrl-C, or when the source parks the run)."""
        self._collect_finished_reads()
        self._cancel_reads()
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

    def _end(self, status: str, message: str, t0: float) -> None:
        self.timings["total_s"] = round(time.monotonic() - t0, 3)
        self._cancel_reads()
        try:
            self._save_progress()
            records.finish_run(self.conn, self.run_id, status=status, error=message, timings=self.timings,
                               metrics=self.metrics)
            self.log("error" if status == "failed" else "warning", f"run.{status}", message)
            self._announce()
        except LeaseLost:
            pass  # another process closed the run after our heartbeat lapsed; its verdict stands
        except psycopg.Error:
            pass  # the control plane itself is gone; the lease will expire and mark the run failed

    def _announce(self) -> None:
        """Tell the spec's webhooks how the run ended, once its row is final: no delivery can change it."""
        if self.hooks:
            webhooks.announce(self.conn, self.hooks, spec=self.spec, run_id=self.run_id, redact=self.redact)

    def _result(self, status: str, t0: float) -> RunResult:
        tables = [
            TableLocation(name, r.target.delta_uri,
                          f"{r.target.postgres_schema}.{r.target.table}" if r.target.postgres_url else None,
                          r.cursor, silver_delta_uri=r.silver.delta_uri if r.silver else None,
                          silver_postgres_table=f"{r.silver.postgres_schema}.{r.silver.table}"
                          if r.silver and r.silver.postgres_url else None)
            for name, r in self.streams.items()
        ]
        return RunResult(self.run_id, self.instance_id, status, self.progress.rows,
                         dict(self.progress.rows_by_stream), self.progress.partitions_total,
                         round(time.monotonic() - t0, 3), tables)


class _Lease:
    """Renews the run's lease from a thread while the driver process lives, whatever the driver is doing
    (planning a large source, waiting on a write): a lease that lapses means the process is gone."""

    def __init__(self, db: Database, run_id: str, lease_seconds: float) -> None:
        self.db, self.run_id, self.lease_seconds = db, run_id, lease_seconds
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._renew, name=f"lease {run_id[:8]}", daemon=True)
        self.thread.start()

    def _renew(self) -> None:
        every = max(0.2, min(5.0, self.lease_seconds / 4))
        try:
            with self.db.connect() as conn:
                while not self.done.wait(every):
                    cur = conn.execute(
                        "update connector_runs set heartbeat_at = now(),"
                        " lease_expires_at = now() + make_interval(secs => %s) where id = %s and status = 'running'",
                        (self.lease_seconds, self.run_id))
                    if cur.rowcount == 0:
                        return  # the run ended, or was taken over: the driver's next progress save says which
        except psycopg.Error:
            return  # the control plane is unreachable: the driver's own writes fail and end the run

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=10)


def _task_cpus(stream: Stream) -> float:
    """CPUs a read task of `stream` asks Ray for: 1, unless the stream says its reads wait on I/O."""
    return float(getattr(stream, "task_cpus", 1.0))


def _describe(exc: BaseException) -> str:
    """Return a one-line description of an exception, without a traceback; URLs have passwords redacted."""
    cause = exc
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.as_instanceof_cause() if hasattr(exc, "as_instanceof_cause") else exc
        inner = getattr(exc, "cause", None)
        if inner is not None:
            cause = inner
    text = str(cause).strip().splitlines()
    first = next((line for line in reversed(text) if line.strip()), type(cause).__name__) if text else type(cause).__name__
    return redact_url(f"{type(cause).__name__}: {first}")
