"""Running a pipeline (engine/pipelines/definition.py): steps whose needs succeeded start together, a failure stops its
dependants, and every change is recorded in `pipeline_runs` for `ipai pipeline status` and agents.

    record (pipeline_runs, queued) -> running: each pass over the steps in file order
      a step whose needs all ended:  one did not succeed -> skipped (naming it)
                                     else run/spec -> queued through connector_run (a spec registered first)
                                          gold     -> apply_gold here, against the control plane
      queued runs are executed by workers (a fleet, or local ones started for the pipeline) and polled
    -> succeeded when every step did; else failed, with the first step that did not succeed and its reason

Connector steps go through the run queue like every other entry point, so the one-active-run-per-instance
rule, leases, retries and deferrals (quota) all apply. A run retried after its worker died is followed to its
retry; a deferred run counts as not succeeded (its resume run is left to the fleet).

For agents (the MCP tool): `start_pipeline` records the run and returns its id while a detached process
runs it; `run_pipeline` blocks; `pipeline_status` reads the record as JSON-ready data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg

from engine.controlplane import records
from engine.controlplane.settings import Settings
from engine.controlplane.db import Database
from engine.core.errors import IpaiError, NotFound, SpecError
from engine.core.private import open_private, private_dir
from engine.pipelines.definition import GoldStep, Pipeline, Step, parse_pipeline
from engine.pipelines.records import (StepState, finish, initial_state, pipeline_status,
                                       record_pipeline, status_of)
from engine.pipelines.workers import LocalWorkers

POLL_S = 0.5
HEARTBEAT_S = 5.0

OnEvent = Callable[[StepState], None]


# -- the API -----------------------------------------------------------------------------------------------


def run_pipeline(db: Database, settings: Settings, pipeline: Pipeline, *, local_workers: bool = True,
                 max_workers: int | None = None, on_event: OnEvent | None = None) -> dict[str, Any]:
    """Record and run `pipeline` to its end in this process; return its status (as `pipeline_status`).

    Raises SpecError (with each step's path) when a `run` step names an instance that does not exist.
    """
    pipeline_run_id = record_pipeline(db, pipeline)
    return execute_pipeline(db, settings, pipeline, pipeline_run_id, local_workers=local_workers,
                            max_workers=max_workers, on_event=on_event)


def start_pipeline(db: Database, settings: Settings, pipeline: Pipeline, *, local_workers: bool = True,
                   max_workers: int | None = None) -> str:
    """Record `pipeline` and run it in a detached process (`ipai pipeline attach`); return the pipeline run id
    once that process has taken it over. Follow it with `pipeline_status`."""
    pipeline_run_id = record_pipeline(db, pipeline)
    with db.connect() as conn:
        tenant = str(conn.execute("select ipai.current_tenant()").fetchone()[0])  # type: ignore[index]
    cmd = [sys.executable, "-m", "engine.cli", "pipeline", "attach", pipeline_run_id]
    if not local_workers:
        cmd.append("--no-workers")
    if max_workers is not None:
        cmd += ["--workers", str(max_workers)]
    env = {k: v for k, v in os.environ.items() if k not in ("IPAI_DATABASE_URL", "IPAI_WORKER_DATABASE_URL")}
    env.update(IPAI_HOME=str(settings.home), IPAI_LAKEHOUSE_URI=settings.lakehouse_uri, IPAI_TENANT=tenant)
    for name, value in (("IPAI_DATABASE_URL", settings.database_url), ("RAY_ADDRESS", settings.ray_address),
                        ("IPAI_WORKER_DATABASE_URL", settings.worker_database_url)):
        if value:
            env[name] = value  # through the environment: never on a command line
    log = _log_dir(settings, pipeline_run_id) / "pipeline.log"
    with open_private(log) as out:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
    deadline = time.monotonic() + 120
    with db.connect() as conn:
        while time.monotonic() < deadline:
            if status_of(conn, pipeline_run_id) != "queued":
                return pipeline_run_id
            if proc.poll() is not None:
                lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
                reason = f"its process exited with code {proc.returncode}: {lines[-1] if lines else 'no output'}"
                finish(conn, pipeline_run_id, "failed", None, reason)
                raise IpaiError(f"pipeline run {pipeline_run_id} did not start: {reason} (log: {log})")
            time.sleep(0.2)
    raise IpaiError(f"pipeline run {pipeline_run_id} has not started after 2 minutes; see {log}")


def attach_pipeline(db: Database, settings: Settings, pipeline_run_id: str, *, local_workers: bool = True,
                    max_workers: int | None = None, on_event: OnEvent | None = None) -> dict[str, Any]:
    """Run a pipeline run recorded by `start_pipeline` (its definition as stored) in this process."""
    with db.connect() as conn:
        row = conn.execute("select definition, source, base_dir, status from pipeline_runs where id::text = %s"
                           " and tenant_id = ipai.current_tenant()", (pipeline_run_id,)).fetchone()
        if row is None:
            raise NotFound(f"no pipeline run {pipeline_run_id!r}")
        if row[3] != "queued":
            raise IpaiError(f"pipeline run {pipeline_run_id} is {row[3]}; only a queued one can be run")
        try:
            pipeline = parse_pipeline(row[0], row[1], base_dir=Path(row[2]))
        except SpecError as exc:  # a spec file it names changed since the run was recorded
            finish(conn, pipeline_run_id, "failed", None, f"the pipeline is no longer valid: {exc}")
            raise
    return execute_pipeline(db, settings, pipeline, pipeline_run_id, local_workers=local_workers,
                            max_workers=max_workers, on_event=on_event)


# -- execution ------------------------------------------------------------------------------------------------


def execute_pipeline(db: Database, settings: Settings, pipeline: Pipeline, pipeline_run_id: str, *,
                     local_workers: bool = True, max_workers: int | None = None,
                     on_event: OnEvent | None = None) -> dict[str, Any]:
    """Run a recorded pipeline run to its end; return its status (as `pipeline_status`)."""
    workers = (LocalWorkers(settings, db.url, log_dir=_log_dir(settings, pipeline_run_id), max_workers=max_workers)
               if local_workers else None)
    with db.connect() as conn:
        _Execution(db, conn, pipeline, pipeline_run_id, workers, on_event, settings.tenant).run()
        return pipeline_status(conn, pipeline_run_id)


@dataclass
class _Execution:
    db: Database
    conn: psycopg.Connection[Any]
    pipeline: Pipeline
    id: str
    workers: LocalWorkers | None
    on_event: OnEvent | None
    tenant: str
    states: dict[str, StepState] = field(default_factory=dict)
    failed_step: str | None = None
    last_write: float = 0.0

    def run(self) -> None:
        self.states = {s.name: initial_state(s) for s in self.pipeline.steps}
        self.conn.execute("update pipeline_runs set status = 'running', started_at = now(), heartbeat_at = now()"
                          " where id = %s", (self.id,))
        try:
            while True:
                while self._start_ready():
                    pass
                if all(s.ended for s in self.states.values()):
                    break
                if self.workers is not None:
                    self.workers.ensure(sum(1 for s in self.states.values() if s.status in ("queued", "running")))
                self._poll()
                if time.monotonic() - self.last_write > HEARTBEAT_S:
                    self._write()
                time.sleep(POLL_S)
        except BaseException as exc:
            reason = "interrupted with Ctrl-C" if isinstance(exc, KeyboardInterrupt) else (
                str(exc) if isinstance(exc, IpaiError) else f"{type(exc).__name__}: {exc}")
            try:
                self._abort(reason)
            except psycopg.Error:
                pass  # the control plane is what failed: the row stays `running` and its heartbeat goes stale
            raise
        finally:
            if self.workers is not None:
                self.workers.stop()
        states = self.states.values()
        ok = all(s.status == "succeeded" for s in states)
        error = None
        if not ok and self.failed_step:
            failed = self.states[self.failed_step]
            error = f"step {failed.name} {failed.status}: {failed.error}"
        finish(self.conn, self.id, "succeeded" if ok else "failed", self.failed_step, error, list(states))

    def _start_ready(self) -> bool:
        """Start (or skip) every pending step whose needs have all ended; return whether any was."""
        changed = False
        for step in self.pipeline.steps:
            state = self.states[step.name]
            if state.status != "pending" or not all(self.states[n].ended for n in step.needs):
                continue
            changed = True
            blocker = next((self.states[n] for n in step.needs if self.states[n].status != "succeeded"), None)
            if blocker is not None:
                root = self.states[blocker.blocked_by] if blocker.blocked_by else blocker
                state.blocked_by = root.name
                how = f"{root.status}" if root is blocker else f"did not run because {root.name} {root.status}"
                self._end(state, "skipped", error=f"not run: it needs {blocker.name}, which {how}")
            elif isinstance(step.config, GoldStep):
                self._gold(step, state)
            else:
                self._queue(step, state)
        return changed

    def _queue(self, step: Step, state: StepState) -> None:
        state.started_at = _now()
        try:
            if step.spec is not None:
                assert step.spec_text is not None
                reg = records.register(self.conn, step.spec, step.spec_text)
                state.detail = f"registered {step.spec.name} ({step.spec.env}) as version {reg.version}"
            name, env = step.instance or ("", None)
            row = self.conn.execute("select public.connector_run(%s, %s, %s)",
                                    (name, env, step.config.full_refresh)).fetchone()  # type: ignore[union-attr]
        except (IpaiError, psycopg.Error) as exc:
            self._end(state, "failed", error=_reason(exc))
            return
        answer: dict[str, Any] = row[0] if row else {}
        if not answer.get("ok"):
            self._end(state, "failed", error=str((answer.get("error") or {}).get("message", "no answer")))
            return
        state.run_id, state.instance = str(answer["run_id"]), name + (f" ({env})" if env else "")
        if not answer["created"]:
            state.detail = f"the instance already had run {state.run_id} {answer['status']}: following it"
        self._set(state, "queued")

    def _gold(self, step: Step, state: StepState) -> None:
        from engine.controlplane.gold import apply_everywhere
        from layers.gold.apply import DEFAULT_DIRECTORY

        state.started_at = _now()
        self._set(state, "running")
        try:
            # its own session: apply_gold switches roles inside its transactions
            with self.db.connect() as conn, self.db.connect() as apply_conn:
                results = [r for _, r in apply_everywhere(conn, apply_conn, self.db.url,
                                                          step.path or DEFAULT_DIRECTORY,
                                                          tenant=self.tenant)]
        except (IpaiError, psycopg.Error) as exc:
            self._end(state, "failed", error=_reason(exc))
            return
        state.detail = (f"{sum(len(r.applied) for r in results)} views applied, "
                        f"{sum(len(r.skipped) for r in results)} skipped")
        failed = [f for r in results for f in r.failed]
        if failed:
            self._end(state, "failed", error="; ".join(str(f) for f in failed))
        else:
            self._end(state, "succeeded")

    def _poll(self) -> None:
        active = {s.run_id: s for s in self.states.values() if s.run_id and s.status in ("queued", "running")}
        if not active:
            return
        rows = self.conn.execute(
            "select r.id::text, r.status, r.error, r.rows_processed, r.deferred_until,"
            " (select x.id::text from connector_runs x where x.retry_of = r.id and x.trigger = 'retry'"
            "  order by x.created_at limit 1) from connector_runs r where r.id = any(%s::uuid[])",
            (list(active),)).fetchall()
        for run_id, status, error, rows_done, deferred_until, retry in rows:
            state = active[run_id]
            if status in ("queued", "running"):
                self._set(state, status)
            elif status == "succeeded":
                state.rows = rows_done
                self._end(state, "succeeded")
            elif retry:  # its worker died or was stopped: the retry resumes from what it committed
                state.run_id = retry
                state.detail = f"run {run_id} {status} ({error}); following its retry {retry}"
                self._set(state, "queued")
            elif status == "deferred":
                until = f" until {deferred_until:%Y-%m-%d %H:%M} UTC" if deferred_until else ""
                self._end(state, "deferred", error=f"run {run_id} deferred{until}: {error}")
            else:
                self._end(state, "failed", error=f"run {run_id} {status}: {error or 'no error recorded'}")

    def _abort(self, reason: str) -> None:
        """Stop after an interruption or an error of the pipeline itself: withdraw runs not yet claimed."""
        queued = [s.run_id for s in self.states.values() if s.status == "queued" and s.run_id]
        if queued:
            withdrawn = self.conn.execute(
                "update connector_runs set status = 'cancelled', ended_at = now(), error = %s"
                " where id = any(%s::uuid[]) and status = 'queued' returning id::text",
                (f"withdrawn: pipeline run {self.id} stopped", queued)).fetchall()
            for (run_id,) in withdrawn:
                records.log(self.conn, run_id, "info", "run.cancelled", f"withdrawn: pipeline run {self.id} stopped")
        for state in self.states.values():
            if state.status == "pending" or state.run_id in queued:
                state.status, state.error, state.ended_at = "skipped", f"not run: the pipeline stopped ({reason})", _now()
            elif state.status == "running":
                state.detail = f"the pipeline stopped ({reason}) while run {state.run_id} was under way; it goes on"
        finish(self.conn, self.id, "failed", self.failed_step, f"the pipeline stopped: {reason}",
                list(self.states.values()))

    def _set(self, state: StepState, status: str) -> None:
        if state.status != status:
            state.status = status
            self._changed(state)

    def _end(self, state: StepState, status: str, *, error: str | None = None) -> None:
        state.status, state.error, state.ended_at = status, error, _now()
        if status in ("failed", "deferred") and self.failed_step is None:
            self.failed_step = state.name
        self._changed(state)

    def _changed(self, state: StepState) -> None:
        self._write()
        if self.on_event is not None:
            self.on_event(state)

    def _write(self) -> None:
        self.conn.execute("update pipeline_runs set steps = %s, failed_step = %s, heartbeat_at = now() where id = %s",
                          (json.dumps([asdict(s) for s in self.states.values()]), self.failed_step, self.id))
        self.last_write = time.monotonic()


def _log_dir(settings: Settings, pipeline_run_id: str) -> Path:
    return private_dir(settings.home, "pipelines", pipeline_run_id)


def _reason(exc: Exception) -> str:
    if isinstance(exc, psycopg.Error):
        text = str(exc).strip()
        return text.splitlines()[0] if text else type(exc).__name__
    return str(exc)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
