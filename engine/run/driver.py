"""The driver: one per run. It holds the run's lease and runs the phases in order, each owned by a module of
`engine.run`:

    prepare_run: register the spec, expire a stale run, create the run row (lease: engine.controlplane.lease)
    secrets and webhooks -> plan.py (per stream, from state) -> readwrite.py (read tasks, bounded in flight;
    one bronze writer actor per table, batched Delta commit + Postgres load, idempotent per partition)
    -> checkpoint.py (ack -> connector_state -> stream done -> cursor advances -> silver merge started)
    -> refresh.py (silver merges collected, gold refreshed) -> run row finished (progress.py saves it all along)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NoReturn

import psycopg

from connectors import connector_for
from engine.controlplane import lease, records, webhooks
from engine.controlplane.db import Database, migrate
from engine.controlplane.settings import Settings
from engine.controlplane.vault import VaultSecretStore, vault_key
from engine.core.errors import IpaiError, LeaseLost, RunCancelled, RunDeferred, RunFailed, SourceDeferred
from engine.core.faults import DriverCrash
from engine.core.secrets import Redactor
from engine.core.secrets import resolve as resolve_secrets
from engine.core.spec import ConnectorSpec
from engine.run.checkpoint import Checkpoints
from engine.run.context import RunContext, RunOptions
from engine.run.plan import StreamRun, plan_streams
from engine.run.progress import Progress, RunProgress
from engine.run.raytime import describe
from engine.run.readwrite import ReadWriteLoop
from engine.run.refresh import SilverMerges, refresh_gold
from layers.addressing import Address

__all__ = ["Progress", "RunOptions", "RunResult", "TableLocation", "execute_run", "prepare_run", "run_sync"]


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
        lease.expire_stale(conn, reg.instance_id)
        run_id = records.start_run(conn, reg.instance_id, reg.definition_id, trigger=options.trigger,
                                   full_refresh=options.full_refresh, lease_seconds=options.lease_seconds)
    return reg.instance_id, run_id


def execute_run(
    spec: ConnectorSpec, *, db: Database, settings: Settings, options: RunOptions, instance_id: str, run_id: str,
    on_progress: Callable[[Progress], None] | None = None, claim_token: str | None = None,
) -> RunResult:
    """Execute a run prepared by `prepare_run` (possibly in another process), or claimed by a worker: then
    `claim_token` (from `ipai.claim_run`) is what lets the run read its tenant's secrets."""
    conn = db.connect()
    try:
        tenant = conn.execute("select r.tenant_id, t.name from connector_runs r join ipai_tenants t"
                              " on t.id = r.tenant_id where r.id = %s", (run_id,)).fetchone()
        store = VaultSecretStore(db.url, run_id, str(tenant[0]) if tenant else "",
                                 key=db.session.get("ipai.vault_key") or vault_key(settings.home),
                                 claim_token=claim_token)
        address = Address(tenant[1] if tenant else settings.tenant, spec.env, spec.name)
        ctx = RunContext(spec=spec, options=options, settings=settings, db=db, conn=conn, instance_id=instance_id,
                         run_id=run_id, store=store, address=address)
        return _Run(ctx, on_progress).execute()
    finally:
        conn.close()


class _Run:
    """One run's phases in order, and how it ends: succeeded, deferred, cancelled or failed."""

    def __init__(self, ctx: RunContext, on_progress: Callable[[Progress], None] | None) -> None:
        self.ctx = ctx
        self.hooks: tuple[webhooks.Target, ...] = ()
        self.progress = RunProgress(ctx, on_progress)
        self.streams: dict[str, StreamRun] = {}
        self.silver = SilverMerges(ctx, self.progress)
        self.checkpoints = Checkpoints(ctx, self.progress, on_stream_done=self.silver.submit)
        self.loop = ReadWriteLoop(ctx, self.streams, self.checkpoints, self.progress)

    def execute(self) -> RunResult:
        ctx, t0 = self.ctx, time.monotonic()
        current: str = "planning"
        held = lease.Lease(ctx.db, ctx.run_id, ctx.options.lease_seconds)
        try:
            ctx.log("info", "run.started", f"run of {ctx.spec.name} ({ctx.spec.source_type}) started",
                    full_refresh=ctx.options.full_refresh, trigger=ctx.options.trigger)
            self._resolve_secrets()
            if connector_for(ctx.spec).plans_with_ray:
                ctx.connect_ray()
            for run in plan_streams(ctx, self.progress):
                self.streams[run.stream.name] = run
                if run.remaining == 0:
                    self.checkpoints.finish_stream(run)
            ctx.timings["plan_s"] = round(time.monotonic() - t0, 3)
            current = "reading"
            if any(s.queued for s in self.streams.values()):
                ctx.connect_ray()
                self.loop.start_writers()
            self.loop.run()
            if self.loop.deferred is not None:
                self._defer(self.loop.deferred, t0)
            current = "building silver"
            self.silver.wait(self.streams.values())
            refresh_gold(ctx, self.streams.values())
            ctx.timings["total_s"] = round(time.monotonic() - t0, 3)
            self.progress.save()
            records.finish_run(ctx.conn, ctx.run_id, status="succeeded", timings=ctx.timings,
                               metrics=self.progress.metrics)
            done = self.progress.progress
            ctx.log("info", "run.succeeded", f"{done.rows} rows in {ctx.timings['total_s']} s",
                    rows=done.rows, rows_by_stream=done.rows_by_stream)
            result = self._result("succeeded", t0)
            self._announce()
            return result
        except KeyboardInterrupt:
            self.loop.drain()
            msg = "cancelled by the user; committed partitions stay committed and the next run resumes"
            self._end("cancelled", msg, t0)
            raise RunCancelled(f"run {ctx.run_id} {msg}", run_id=ctx.run_id) from None
        except DriverCrash:
            self.loop.kill_writers()  # stands for the driver process dying: its actors die with it
            raise
        except RunDeferred:
            raise
        except SourceDeferred as exc:  # raised while planning; a read's deferral ends the loop instead
            self._defer(exc, t0)
        except IpaiError as exc:
            msg = ctx.redact(str(exc))
            self._end("failed", msg, t0)
            raise RunFailed(f"run {ctx.run_id} failed while {current}: {msg}", run_id=ctx.run_id) from None
        except Exception as exc:  # noqa: BLE001 - every other failure is reported on the run, then raised as ours
            msg = ctx.redact(describe(exc))
            self._end("failed", msg, t0)
            raise RunFailed(f"run {ctx.run_id} failed while {current}: {msg}", run_id=ctx.run_id) from None
        finally:
            held.stop()
            self.loop.stop_writers()
            for run in self.streams.values():
                release = getattr(run.stream, "release", None)
                if release is not None:
                    release()

    def _resolve_secrets(self) -> None:
        """Signing keys first, so a run that fails on a source secret is still announced; readers get only the
        source's secrets. Every secret is masked in what the run writes from here on."""
        ctx = self.ctx
        self.hooks = webhooks.prepare(ctx.spec, ctx.store)
        ctx.secrets = resolve_secrets(ctx.spec.model_copy(update={"webhooks": ()}), ctx.store)
        ctx.redact = Redactor.of([*ctx.secrets.values(), *(h.key for h in self.hooks)])

    def _defer(self, exc: SourceDeferred, t0: float) -> NoReturn:
        """Park the run until the source's quota resets: committed partitions stay, the extraction stays open."""
        ctx = self.ctx
        until = datetime.fromtimestamp(exc.until, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        msg = ctx.redact(f"deferred until {until}: {exc}")
        self.loop.drain()
        ctx.timings["total_s"] = round(time.monotonic() - t0, 3)
        self.progress.save()
        records.finish_run(ctx.conn, ctx.run_id, status="deferred", error=msg, timings=ctx.timings,
                           metrics=self.progress.metrics, deferred_until=exc.until)
        ctx.log("warning", "run.deferred", msg, until=exc.until)
        self._announce()
        raise RunDeferred(f"run {ctx.run_id} {msg}; run it again after that time to resume",
                          run_id=ctx.run_id, until=exc.until)

    def _end(self, status: str, message: str, t0: float) -> None:
        ctx = self.ctx
        ctx.timings["total_s"] = round(time.monotonic() - t0, 3)
        self.loop.cancel_reads()
        try:
            self.progress.save()
            records.finish_run(ctx.conn, ctx.run_id, status=status, error=message, timings=ctx.timings,
                               metrics=self.progress.metrics)
            ctx.log("error" if status == "failed" else "warning", f"run.{status}", message)
            self._announce()
        except LeaseLost:
            pass  # another process closed the run after our heartbeat lapsed; its verdict stands
        except psycopg.Error:
            pass  # the control plane itself is gone; the lease will expire and mark the run failed

    def _announce(self) -> None:
        """Tell the spec's webhooks how the run ended, once its row is final: no delivery can change it."""
        if self.hooks:
            webhooks.announce(self.ctx.conn, self.hooks, spec=self.ctx.spec, run_id=self.ctx.run_id,
                              redact=self.ctx.redact)

    def _result(self, status: str, t0: float) -> RunResult:
        tables = [
            TableLocation(name, r.target.delta_uri,
                          f"{r.target.postgres_schema}.{r.target.table}" if r.target.postgres_url else None,
                          r.cursor, silver_delta_uri=r.silver.delta_uri if r.silver else None,
                          silver_postgres_table=f"{r.silver.postgres_schema}.{r.silver.table}"
                          if r.silver and r.silver.postgres_url else None)
            for name, r in self.streams.items()
        ]
        done = self.progress.progress
        return RunResult(self.ctx.run_id, self.ctx.instance_id, status, done.rows, dict(done.rows_by_stream),
                         done.partitions_total, round(time.monotonic() - t0, 3), tables)
