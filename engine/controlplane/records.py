"""Control-plane records: definitions, instances, runs and their structured logs."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from engine.core.errors import LeaseLost, NotFound, RunConflict
from engine.core.spec import ConnectorSpec

ACTIVE = ("queued", "running")
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"
"""Who holds a run: this process (a worker adds its own tag)."""
LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Registered:
    definition_id: str
    instance_id: str
    version: int


def register(conn: psycopg.Connection[Any], spec: ConnectorSpec, yaml_text: str) -> Registered:
    """Store the spec as a definition version of the session's tenant (new only if its text changed) and point
    the instance at it (`ipai.register`, shared with the `connector_create` RPC)."""
    row = conn.execute(
        "select definition_id, instance_id, version from ipai.register(ipai.current_tenant(), %s, %s, %s, %s, %s)",
        (spec.name, spec.source_type, yaml_text, spec.env, spec.schedule),
    ).fetchone()
    assert row is not None
    return Registered(str(row[0]), str(row[1]), int(row[2]))


def start_run(
    conn: psycopg.Connection[Any], instance_id: str, definition_id: str, *, trigger: str, full_refresh: bool,
    lease_seconds: float = 120.0,
) -> str:
    """Create a running run; refuse with the active run's id when the instance already has one."""
    try:
        row = conn.execute(
            "insert into connector_runs (instance_id, definition_id, status, trigger, full_refresh,"
            " started_at, heartbeat_at, lease_expires_at, worker_id) values (%s, %s, 'running', %s, %s, now(), now(),"
            " now() + make_interval(secs => %s), %s) returning id",
            (instance_id, definition_id, trigger, full_refresh, lease_seconds, WORKER_ID),
        ).fetchone()
    except psycopg.errors.UniqueViolation:
        active = conn.execute(
            "select id, status, started_at from connector_runs where instance_id = %s and status = any(%s)",
            (instance_id, list(ACTIVE)),
        ).fetchone()
        active_id = str(active[0]) if active else "unknown"
        raise RunConflict(
            f"instance already has an active run {active_id} (started {active[2] if active else '?'}); "
            f"wait for it (`ipai runs`), or stop it before starting another",
            active_run_id=active_id,
        ) from None
    assert row is not None
    return str(row[0])


def set_ray_job(conn: psycopg.Connection[Any], run_id: str, job_id: str, *, holder: str | None = None) -> None:
    """Record the Ray job that runs the run (and, when given, name it as the run's holder for lease messages)."""
    conn.execute("update connector_runs set ray_job_id = %s, worker_id = coalesce(%s, worker_id) where id = %s",
                 (job_id, holder, run_id))


def update_progress(
    conn: psycopg.Connection[Any], run_id: str, *, rows: int, partitions_done: int, partitions_total: int,
    rows_by_stream: dict[str, int], lease_seconds: float = 120.0,
) -> None:
    """Record progress and renew the run's lease; raise LeaseLost if the run is no longer ours."""
    cur = conn.execute(
        "update connector_runs set rows_processed = %s, partitions_done = %s, partitions_total = %s,"
        " rows_by_stream = %s, heartbeat_at = now(), lease_expires_at = now() + make_interval(secs => %s)"
        " where id = %s and status = 'running'",
        (rows, partitions_done, partitions_total, json.dumps(rows_by_stream), lease_seconds, run_id),
    )
    if cur.rowcount == 0:
        raise LeaseLost(_lease_lost(conn, run_id))


def finish_run(
    conn: psycopg.Connection[Any], run_id: str, *, status: str, error: str | None = None,
    error_details: dict[str, Any] | None = None, timings: dict[str, float] | None = None,
    deferred_until: float | None = None, metrics: dict[str, Any] | None = None,
) -> None:
    """Close a running run; raise LeaseLost if another process already closed it (its lease expired)."""
    cur = conn.execute(
        "update connector_runs set status = %s, ended_at = now(), error = %s, error_details = %s,"
        " timings = %s, deferred_until = to_timestamp(%s), metrics = %s where id = %s and status = 'running'",
        (status, error, json.dumps(error_details) if error_details else None, json.dumps(timings or {}),
         deferred_until, json.dumps(metrics or {}), run_id),
    )
    if cur.rowcount == 0:
        raise LeaseLost(_lease_lost(conn, run_id))


def _lease_lost(conn: psycopg.Connection[Any], run_id: str) -> str:
    row = conn.execute("select status, error from connector_runs where id = %s", (run_id,)).fetchone()
    now = f"it is now {row[0]}" + (f" ({row[1]})" if row and row[1] else "") if row else "it no longer exists"
    return (f"run {run_id} lost its lease: {now}. Another run may have taken over the instance; "
            "committed partitions are kept and the next run resumes")


def log(
    conn: psycopg.Connection[Any], run_id: str, level: str, event: str, message: str, **fields: Any
) -> None:
    """Persist one structured log record for the run (and echo it as JSON to stderr when asked)."""
    assert level in LEVELS
    conn.execute(
        "insert into connector_run_logs (run_id, level, event, message, fields) values (%s, %s, %s, %s, %s)",
        (run_id, level, event, message, json.dumps(fields, default=str)),
    )


def find_instance(conn: psycopg.Connection[Any], ref: str, *, env: str | None = None) -> dict[str, Any]:
    """Return the instance named or identified by `ref`; raise NotFound naming what exists."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "select i.*, d.type as source_type, d.version, t.name as tenant_name from connector_instances i"
            " join connector_definitions d on d.id = i.definition_id join ipai_tenants t on t.id = i.tenant_id"
            " where (i.id::text = %s or i.name = %s) and (%s::text is null or i.env = %s)"
            " and i.tenant_id = ipai.current_tenant() order by i.env",
            (ref, ref, env, env),
        ).fetchall()
        if len(rows) == 1:
            return rows[0]
        if len(rows) > 1:
            envs = ", ".join(r["env"] for r in rows)
            raise NotFound(f"instance {ref!r} exists in several environments ({envs}); pass --env")
        known = [r["name"] for r in cur.execute(
            "select name from connector_instances where tenant_id = ipai.current_tenant() order by name")]
    hint = f"known instances: {', '.join(known)}" if known else "no instance yet: run `ipai submit SPEC` first"
    raise NotFound(f"no connector instance {ref!r}; {hint}")


def instance_spec(conn: psycopg.Connection[Any], instance: dict[str, Any]) -> ConnectorSpec:
    """Return the spec an instance (a `find_instance` record) runs: its definition's YAML, validated."""
    from connectors.specload import parse_spec

    row = conn.execute("select yaml_spec from connector_definitions where id = %s",
                       (instance["definition_id"],)).fetchone()
    return parse_spec(row[0] if row else "", filename=f"instance {instance['name']}")


def list_runs(conn: psycopg.Connection[Any], *, instance_id: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "select r.*, i.name as instance_name, i.env from connector_runs r"
            " join connector_instances i on i.id = r.instance_id"
            " where (%s::uuid is null or r.instance_id = %s::uuid) and r.tenant_id = ipai.current_tenant()"
            " order by r.created_at desc limit %s",
            (instance_id, instance_id, limit),
        ).fetchall()


def get_run(conn: psycopg.Connection[Any], run_id: str) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "select r.*, i.name as instance_name from connector_runs r"
            " join connector_instances i on i.id = r.instance_id"
            " where (r.id::text = %s or r.id::text like %s) and r.tenant_id = ipai.current_tenant()",
            (run_id, f"{run_id}%"),
        ).fetchall()
    if len(row) != 1:
        what = "no run" if not row else "several runs start with"
        raise NotFound(f"{what} {run_id!r}; `ipai runs` lists recent runs")
    return row[0]


def get_logs(conn: psycopg.Connection[Any], run_id: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "select ts, level, event, message, fields from connector_run_logs where run_id = %s order by id",
            (run_id,),
        ).fetchall()


def format_log(record: dict[str, Any]) -> str:
    """Return one log record as a JSON line."""
    ts = record["ts"]
    out = {"ts": ts.isoformat() if isinstance(ts, datetime) else ts, "level": record["level"],
           "event": record["event"], "message": record["message"], **(record["fields"] or {})}
    return json.dumps(out, default=str)
