"""After bronze: the run's silver merges and its gold refresh, each one call into `layers.refresh`.

A stream's merge starts as a Ray task as soon as its extraction finishes (`SilverMerges.submit`), while other
streams are still read; `SilverMerges.wait` starts those of streams with a backlog and collects them all, marking
what was merged in the state ledger; `refresh_gold` follows once per run.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import psycopg
import ray

from engine.controlplane import gold, state
from engine.core.errors import IpaiError, RunFailed
from engine.run.context import RunContext
from engine.run.plan import StreamRun
from engine.run.progress import HEARTBEAT_S, RunProgress
from engine.run.raytime import describe, merge_silver
from layers.refresh import Merge, SilverResult, refresh_gold as refresh_gold_views


class SilverMerges:
    """The silver merges of one run: at most one in flight per stream."""

    def __init__(self, ctx: RunContext, progress: RunProgress) -> None:
        self.ctx, self.progress = ctx, progress
        self.jobs: dict[Any, tuple[StreamRun, list[Merge]]] = {}  # silver merge ref -> (stream, extractions)

    def submit(self, run: StreamRun) -> None:
        """Start merging the stream's finished, unmerged extractions into silver (a Ray task), while other
        streams are still read."""
        if run.silver is None or any(r is run for r, _ in self.jobs.values()):
            return
        pending = state.unmerged_extractions(self.ctx.conn, self.ctx.instance_id, run.stream.name)
        if pending:
            self.ctx.connect_ray()
            ref = merge_silver.options(name=f"silver {run.silver.table}").remote(run.silver, pending, self.ctx.run_id)
            self.jobs[ref] = (run, pending)

    def wait(self, streams: Iterable[StreamRun]) -> None:
        """Wait for the silver merges, after starting those of streams with a backlog (a run that stopped
        before merging, or silver turned on later)."""
        streams = list(streams)
        for run in streams:
            self.submit(run)
        t0 = time.monotonic()
        while self.jobs:
            ready, _ = ray.wait(list(self.jobs), num_returns=1, timeout=HEARTBEAT_S)
            for ref in ready:
                run, pending = self.jobs.pop(ref)
                self._done(ref, run, pending)
            self.progress.beat()
        if streams:
            self.ctx.timings["silver_wait_s"] = round(time.monotonic() - t0, 3)

    def _done(self, ref: Any, run: StreamRun, pending: list[Merge]) -> None:
        ctx = self.ctx
        name, table = run.stream.name, run.silver.table if run.silver else ""
        try:
            result: SilverResult = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - reported with the table it concerns
            raise RunFailed(f"stream {name}: merging into silver {table} failed: {ctx.redact(describe(exc))}; "
                            "bronze and the cursor are kept, and the next run merges again",
                            run_id=ctx.run_id) from None
        state.mark_merged(ctx.conn, pending)
        self.progress.count(name, silver_rows=result.rows_merged, silver_deleted=result.missing_deleted,
                            silver_quarantined=result.quarantined)
        ctx.log("info", "silver.merged", f"{name}: {result.rows_merged} rows merged into silver {table} "
                f"({result.rows_in} read from bronze) in {result.seconds} s"
                + (f"; {result.missing_deleted} keys the source no longer has marked deleted"
                   if result.missing_deleted else ""),
                stream=name, rows_in=result.rows_in, rows_merged=result.rows_merged, extractions=len(pending),
                missing_deleted=result.missing_deleted, changes=result.changes, seconds=result.seconds)
        if result.quarantined:
            reasons = "; ".join(f"{n} x {r}" for r, n in result.reasons.items())
            quarantine = run.silver.quarantine_table if run.silver else f"quarantine_{table}"
            ctx.log("warning", "silver.quarantined", f"{name}: {result.quarantined} rows set aside in "
                    f"{run.target.postgres_schema}.{quarantine}: {reasons}", stream=name, quarantined=result.quarantined,
                    reasons=result.reasons)


def refresh_gold(ctx: RunContext, streams: Iterable[StreamRun]) -> None:
    """Keep the gold views in place (`layers` with gold): the shipped definitions are (re)applied to the
    Postgres destination. A view that cannot be applied is a warning on the run, never its failure."""
    if "gold" not in ctx.spec.layers or not ctx.spec.destinations.postgres.enabled:
        return
    url = next((r.target.postgres_url for r in streams if r.target.postgres_url), None)
    if url is None:
        return
    try:
        scope = gold.scope_for(ctx.conn, ctx.server_of(url), tenant=ctx.address.tenant, env=ctx.address.env)
        result = refresh_gold_views(url, scope)
    except (IpaiError, psycopg.Error) as exc:
        ctx.log("warning", "gold.failed", f"gold views not applied: {ctx.redact(str(exc))}")
        return
    ctx.log("info", "gold.applied", f"{len(result.applied)} gold views current in {scope.gold_schema}"
            + (f"; {len(result.skipped)} wait for their silver tables" if result.skipped else ""),
            applied=list(result.applied), skipped=[str(s) for s in result.skipped])
    for failure in result.failed:
        ctx.log("warning", "gold.failed", f"gold view {failure.view} not applied: {failure}", view=failure.view)
