"""The record of pipeline runs (`pipeline_runs`): recording a run, its steps' states, checking the instances
its steps name, and reading its status as JSON-ready data (for `ipai pipeline status` and agents).

Running one is engine/pipelines/runner.py.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from engine.controlplane import records
from engine.controlplane.db import Database, migrate
from engine.core.errors import NotFound, SpecError
from engine.core.yamlfile import SpecIssue
from engine.pipelines.definition import Pipeline, RunStep, Step

STALE_S = 60.0
"""A running pipeline whose heartbeat is older than this has lost its process."""
ENDED = ("succeeded", "failed", "deferred", "skipped")


@dataclass
class StepState:
    """What one step did; stored in `pipeline_runs.steps` and passed to `on_event`."""

    name: str
    kind: str
    target: str
    needs: list[str]
    status: str = "pending"
    """pending | queued | running | succeeded | failed | deferred | skipped"""
    instance: str | None = None
    run_id: str | None = None
    rows: int | None = None
    detail: str | None = None
    error: str | None = None
    blocked_by: str | None = None
    """For a skipped step: the step upstream that failed (or was deferred), so it did not run."""
    started_at: str | None = None
    ended_at: str | None = None

    @property
    def ended(self) -> bool:
        return self.status in ENDED


def pipeline_status(conn: psycopg.Connection[Any], pipeline_run_id: str) -> dict[str, Any]:
    """Return a pipeline run of the session's tenant as JSON-ready data; `pipeline_run_id` may be a prefix.

    Keys: pipeline_run_id, pipeline, status, failed_step, error, source, created_at, started_at, ended_at,
    heartbeat_at, stale (a running pipeline whose process stopped heartbeating), steps (list, file order).
    """
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "select id, name, status, failed_step, error, source, steps, created_at, started_at, ended_at,"
            " heartbeat_at, now() as now from pipeline_runs"
            " where (id::text = %s or id::text like %s) and tenant_id = ipai.current_tenant()",
            (pipeline_run_id, f"{pipeline_run_id}%")).fetchall()
    if len(rows) != 1:
        what = "no pipeline run" if not rows else "several pipeline runs start with"
        raise NotFound(f"{what} {pipeline_run_id!r}; `ipai pipeline run FILE` prints the id of a new one")
    r = rows[0]
    beat = r["heartbeat_at"] or r["created_at"]
    stale = r["status"] == "running" and r["now"] - beat > timedelta(seconds=STALE_S)
    iso = {k: (r[k].isoformat() if r[k] else None) for k in ("created_at", "started_at", "ended_at", "heartbeat_at")}
    return {"pipeline_run_id": str(r["id"]), "pipeline": r["name"], "status": r["status"],
            "failed_step": r["failed_step"], "error": r["error"], "source": r["source"], **iso, "stale": stale,
            "steps": r["steps"]}


def record_pipeline(db: Database, pipeline: Pipeline) -> str:
    """Check that the instances `run` steps name exist, then record a queued run; return its id."""
    with db.connect() as conn:
        migrate(conn)
        check_instances(conn, pipeline)
        steps = [asdict(initial_state(s)) for s in pipeline.steps]
        row = conn.execute(
            "insert into pipeline_runs (name, source, base_dir, definition, steps) values (%s, %s, %s, %s, %s)"
            " returning id", (pipeline.name, pipeline.source, str(pipeline.base_dir), pipeline.text,
                              json.dumps(steps))).fetchone()
    assert row is not None
    return str(row[0])


def check_instances(conn: psycopg.Connection[Any], pipeline: Pipeline) -> None:
    """Raise SpecError (each with its step's path) for `run` steps naming no instance of the session's tenant;
    an instance a spec step of the same pipeline registers counts as existing."""
    registered = {s.spec.name for s in pipeline.steps if s.spec is not None}
    issues = []
    for step in pipeline.steps:
        if isinstance(step.config, RunStep) and step.config.run not in registered:
            try:
                records.find_instance(conn, step.config.run, env=step.config.env)
            except NotFound as exc:
                issues.append(SpecIssue(pipeline.source, step.line, step.column, f"steps.{step.name}.run", str(exc)))
    if issues:
        raise SpecError("\n".join(str(i) for i in issues), issues=issues)


def initial_state(step: Step) -> StepState:
    return StepState(step.name, step.kind, step.target, list(step.needs))


def finish(conn: psycopg.Connection[Any], pipeline_run_id: str, status: str, failed_step: str | None,
            error: str | None, steps: list[StepState] | None = None) -> None:
    conn.execute(
        "update pipeline_runs set status = %s, failed_step = %s, error = %s, ended_at = now(), heartbeat_at = now(),"
        " steps = coalesce(%s::jsonb, steps) where id = %s",
        (status, failed_step, error, json.dumps([asdict(s) for s in steps]) if steps is not None else None,
         pipeline_run_id))


def status_of(conn: psycopg.Connection[Any], pipeline_run_id: str) -> str | None:
    row = conn.execute("select status from pipeline_runs where id = %s", (pipeline_run_id,)).fetchone()
    return row[0] if row else None
