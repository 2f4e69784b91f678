"""The `ipai` CLI as a user runs it: a real process, real Postgres, Delta and the shared Ray cluster."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import psycopg
import pytest
import ray

from engine.controlplane.db import start_embedded
from engine.controlplane.settings import LocalHead
from engine.run.localray import head_processes
from engine.run.driver import RunOptions, prepare_run
from connectors.specload import parse_spec
from tests.support.cli import env_for, ipai
from tests.support.truth import bronze_postgres, bronze_table, bronze_uri, source_rows

pytestmark = pytest.mark.usefixtures("ray_cluster")

SPEC = """\
name: {name}
source_type: sample
source:
  seed: 5
  days: 30
  customers: 2000
  orders: 10000
  partition_rows: {partition_rows}
  read_delay_ms: {delay}
"""


def write_spec(tmp_path: Path, name: str = "cli", delay: int = 0, *, partition_rows: int = 2000,
               extra: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SPEC.format(name=name, delay=delay, partition_rows=partition_rows) + extra)
    return path


def runs(env) -> list[dict]:
    return [json.loads(line) for line in ipai("runs", "--json", env=env).stdout.splitlines()]


def test_submit_wait_lands_data_and_runs_logs_state_report_it(tmp_path, settings):
    env = env_for(settings)
    spec_path = write_spec(tmp_path)
    done = ipai("submit", str(spec_path), "--wait", env=env)
    spec = parse_spec(spec_path.read_text())
    orders = bronze_table(spec, "orders")
    assert orders == "bronze_dev.raw_cli_orders" and orders in done.stdout
    assert bronze_uri(spec, "orders", settings.lakehouse_uri) in done.stdout
    truth = source_rows(spec, "orders")
    assert bronze_postgres(settings.database_url, orders).num_rows == truth.num_rows

    counted = ipai("sql", f"select count(*) as n from {orders}", env=env).stdout
    assert f"│ {truth.num_rows} │" in counted
    bad = ipai("sql", "selct 1", env=env, check=False)
    assert bad.returncode == 1 and 'syntax error at or near "selct"' in bad.stderr and "Traceback" not in bad.stderr

    [run] = runs(env)
    assert run["status"] == "succeeded" and run["instance_name"] == "cli"
    assert run["rows_processed"] > truth.num_rows  # customers and order lines too

    events = [json.loads(line)["event"] for line in ipai("logs", run["id"], env=env).stdout.splitlines()]
    assert events[0] == "run.started" and events[-1] == "run.succeeded"
    assert events.count("stream.done") == 3

    shown = ipai("state", "show", "cli", env=env).stdout
    assert "2026-01-31T00:00:00.000000Z" in shown

    reset = ipai("state", "reset", "cli", "--yes", env=env).stdout
    assert "reset every stream of cli" in reset
    assert "2026-01-31" not in ipai("state", "show", "cli", env=env).stdout  # cursors forgotten
    ipai("submit", str(spec_path), "--wait", env=env)
    assert runs(env)[0]["rows_processed"] == run["rows_processed"]  # re-read from the start after reset


def test_submit_without_wait_returns_a_run_id_and_the_run_completes(tmp_path, settings):
    env = env_for(settings)
    started = ipai("submit", str(write_spec(tmp_path, "bg")), env=env)
    run_id = started.stdout.split()[1]
    # Polled in Postgres: an `ipai runs` every half second would take a core from the run it watches.
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            [run] = conn.execute("select id::text, status, error from connector_runs").fetchall()
            if run[1] != "running":
                break
            time.sleep(0.2)
    assert run[:2] == (run_id, "succeeded"), run


def test_invalid_spec_exits_2_with_position_and_writes_nothing(tmp_path, settings):
    env = env_for(settings)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsource_type: sample\nsource:\n  seeds: 3\n")
    proc = ipai("submit", str(bad), "--wait", env=env, check=False)
    assert proc.returncode == 2
    assert f"{bad}:4:3: source.seeds: unknown field" in proc.stderr
    assert "Traceback" not in proc.stderr
    with psycopg.connect(settings.database_url) as conn:
        assert conn.execute("select to_regclass('connector_definitions')").fetchone() == (None,)


def test_unknown_source_type_lists_the_known_ones(tmp_path, settings):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsource_type: hubspot\n")
    proc = ipai("spec", "validate", str(bad), env=env_for(settings), check=False)
    assert proc.returncode == 2
    assert "unknown source_type 'hubspot'; known source types: database, ga4, github, http, odoo, sample" in proc.stderr


def test_unreachable_database_names_the_url_without_its_password(tmp_path, settings):
    env = env_for(settings)
    env["IPAI_DATABASE_URL"] = "postgresql://loader:s3cret-pw@127.0.0.1:1/ipai"
    proc = ipai("runs", env=env, check=False)
    assert proc.returncode == 1
    assert "cannot reach the database at postgresql://loader:***@127.0.0.1:1/ipai" in proc.stderr
    assert "s3cret-pw" not in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_second_run_while_one_is_active_is_refused_with_its_id(tmp_path, settings, database):
    spec_path = write_spec(tmp_path, "busy")
    _, active = prepare_run(parse_spec(spec_path.read_text()), spec_path.read_text(), db=database,
                            options=RunOptions())
    proc = ipai("submit", str(spec_path), "--wait", env=env_for(settings), check=False)
    assert proc.returncode == 1
    assert f"instance already has an active run {active}" in proc.stderr


def test_db_migrate_is_idempotent(settings):
    env = env_for(settings)
    shipped = sorted(p.stem for p in Path("supabase/migrations").glob("*.sql"))
    assert f"applied {len(shipped)} migration(s): {', '.join(shipped)}" in ipai("db", "migrate", env=env).stdout
    assert "up to date" in ipai("db", "migrate", env=env).stdout


def test_ctrl_c_cancels_the_run_and_the_next_run_resumes(tmp_path, settings):
    env = env_for(settings)
    spec_path = write_spec(tmp_path, "slow", delay=1500)  # wide enough that Ctrl-C lands mid-run on a busy machine
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "submit", str(spec_path), "--wait"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            row = None
            if conn.execute("select to_regclass('connector_state')").fetchone()[0]:
                row = conn.execute("select count(*) from connector_state where kind = 'partition'").fetchone()
            if row and row[0] >= 1:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 130, stderr
        assert "committed partitions stay committed" in stderr
        status, done = conn.execute("select status, partitions_done from connector_runs").fetchone()
        assert status == "cancelled"
        committed = conn.execute("select count(*) from connector_state where kind = 'partition'").fetchone()[0]
        assert committed >= 1

    ipai("submit", str(spec_path), "--wait", env=env)
    spec = parse_spec(spec_path.read_text())
    for stream in ("customers", "orders", "order_lines"):
        pg = bronze_postgres(settings.database_url, bronze_table(spec, stream))
        assert pg.num_rows == source_rows(spec, stream).num_rows  # each row once: nothing lost, nothing twice


def test_embedded_postgres_is_used_when_no_database_is_configured(tmp_path, settings):
    env = env_for(settings, database=False)
    spec_path = write_spec(tmp_path, "emb")
    done = ipai("submit", str(spec_path), "--wait", env=env)
    pgdata = settings.home / "pgdata"
    assert f"embedded PostgreSQL in {pgdata}" in done.stderr
    db = start_embedded(pgdata)
    spec = parse_spec(spec_path.read_text())
    truth = source_rows(spec, "order_lines")
    assert bronze_postgres(db.url, bronze_table(spec, "order_lines")).num_rows == truth.num_rows


def test_local_ray_head_is_reused_by_submit_and_stops_alone(tmp_path, settings):
    env = env_for(settings)
    del env["RAY_ADDRESS"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dashboard_port = s.getsockname()[1]
    started = ipai("ray", "start", "--dashboard-port", str(dashboard_port), env=env).stdout
    address = started.split("local Ray running at ")[1].split(";")[0]
    try:
        assert ipai("ray", "status", env=env).stdout.startswith(f"local Ray running at {address}")
        # One stream in one partition: what matters is where it runs (a fresh head starts every worker).
        spec_path = write_spec(tmp_path, "head", partition_rows=10_000, extra="streams: [{name: orders}]\n")
        done = ipai("submit", str(spec_path), "--wait", env=env)
        assert f"on Ray at {address}" in done.stderr
        orders = bronze_table(parse_spec(spec_path.read_text()), "orders")
        assert bronze_postgres(settings.database_url, orders).num_rows > 0
    finally:
        head = [p.pid for p in head_processes(LocalHead.read(settings.home))]  # type: ignore[arg-type]
        stopped = ipai("ray", "stop", env=env).stdout
    assert "stopped the local Ray head" in stopped
    # Every process of that head is gone, the raylet's renamed agents (ray::DashboardAgent ...) included.
    assert [pid for pid in head if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE] == []
    assert ipai("ray", "status", env=env, check=False).returncode == 1
    assert ray.get(ray.remote(lambda: 42).remote()) == 42  # the test session's own Ray is untouched
