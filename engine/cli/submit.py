"""`ipai submit`: run a sync of a spec in the foreground (`--wait`, with a progress bar), in the background, or
as a Ray job on a head's dashboard (`--address http://HEAD:8265`).

Exit codes as a local run's: 0 succeeded, 1 failed or refused (another run holds the instance), 75 deferred,
130 cancelled with Ctrl-C.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from engine.cli.common import DatabaseOpt, LakehouseOpt, control_plane, err, load_spec_file, out, resolve_settings
from engine.controlplane import records
from engine.controlplane.db import Database
from engine.controlplane.settings import Settings
from engine.core.errors import IpaiError, RunCancelled, RunConflict
from engine.core.private import open_private, private_dir
from engine.core.spec import ConnectorSpec

if TYPE_CHECKING:
    from engine.run.rayjobs import Jobs


def submit(
    spec_file: Annotated[Path, typer.Argument(metavar="SPEC", help="Connector spec YAML.")],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Run in the foreground with a progress bar, "
                                       "or start it in the background and print its run id.")] = False,
    full_refresh: Annotated[bool, typer.Option("--full-refresh", help="Ignore stored cursors and unfinished "
                                               "extractions; re-read everything.")] = False,
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster address, or a head's dashboard "
                       "(http://HEAD:8265) to submit the run as a Ray job (default: RAY_ADDRESS, else a local Ray).",
                       show_default=False)] = None,
    dashboard: Annotated[bool, typer.Option("--dashboard", help="Start the Ray dashboard with a local Ray.")] = False,
    database_url: DatabaseOpt = None,
    lakehouse: LakehouseOpt = None,
    attach_run: Annotated[str | None, typer.Option("--attach-run", hidden=True)] = None,
) -> None:
    """Run a sync of SPEC: plan partitions, read them in parallel on Ray, land bronze in Delta and Postgres."""
    from engine.run import rayjobs
    from engine.run.driver import RunOptions, prepare_run

    spec, text = load_spec_file(spec_file)
    settings = resolve_settings(database_url, lakehouse, address)
    options = RunOptions(full_refresh=full_refresh, dashboard=dashboard)
    if attach_run is None and rayjobs.is_jobs_address(settings.ray_address):
        _submit_ray_job(spec_file, spec, text, settings, options, wait=wait)
        return
    with control_plane(settings, quiet=attach_run is not None) as db:
        if attach_run:
            instance_id = str(records.get_run(db.connect(), attach_run)["instance_id"])
            execute(spec, db, settings, options, instance_id, attach_run, show=False)
            return
        try:
            instance_id, run_id = prepare_run(spec, text, db=db, options=options)
        except RunConflict as exc:
            err.print(f"[red]refused:[/red] {exc}", highlight=False)
            raise typer.Exit(1) from None
        job_id = rayjobs.current_job_id()
        if job_id:  # submitted straight through the Jobs API (an agent's POST /api/jobs/): say which job runs it
            with db.connect() as conn:
                records.set_ray_job(conn, run_id, job_id)
        if wait:
            execute(spec, db, settings, options, instance_id, run_id, show=True)
            return
        _start_background(spec_file, settings, run_id, db, full_refresh=full_refresh)
        out.print(f"run {run_id} started in the background for {spec.name} ({spec.env})")
        out.print(f"follow it with: ipai runs   |   ipai logs {run_id}")


def execute(spec: ConnectorSpec, db: Database, settings: Settings, options: Any, instance_id: str, run_id: str,
            *, show: bool) -> None:
    """Run a prepared run here; with `show`, with a progress bar and then where the data landed."""
    from engine.run.driver import execute_run

    if not show:
        try:
            execute_run(spec, db=db, settings=settings, options=options, instance_id=instance_id, run_id=run_id)
        except RunCancelled:
            raise typer.Exit(130) from None
        return
    where = f"Ray at {settings.ray_address}" if settings.ray_address else "a local Ray started for this run"
    err.print(f"run {run_id}: syncing {spec.name} ({spec.source_type}) on {where} ...", highlight=False)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("partitions  {task.fields[rows]:>12,} rows  {task.fields[rate]:>10,.0f} rows/s"),
               TimeElapsedColumn()]
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task("sync", total=None, rows=0, rate=0.0)

        def on_progress(p: Any) -> None:
            bar.update(task, total=p.partitions_total, completed=p.partitions_done, rows=p.rows,
                       rate=p.rows_per_second)

        try:
            result = execute_run(spec, db=db, settings=settings, options=options, instance_id=instance_id,
                                 run_id=run_id, on_progress=on_progress)
        except RunCancelled as exc:
            err.print(f"[yellow]cancelled:[/yellow] {exc}", highlight=False)
            raise typer.Exit(130) from None
        bar.update(task, total=max(1, result.partitions), completed=max(1, result.partitions))
    _print_result(result, db)


def _print_result(result: Any, db: Database) -> None:
    rate = result.rows / result.seconds if result.seconds else 0
    out.print(f"[green]run {result.run_id} succeeded[/green]: {result.rows:,} rows in {result.seconds:.1f} s "
              f"({rate:,.0f} rows/s)", highlight=False)
    out.print("where the data landed:")
    for t in result.tables:
        out.print(f"  {t.stream}: {result.rows_by_stream.get(t.stream, 0):,} rows this run; cursor {t.cursor or '-'}",
                  highlight=False, soft_wrap=True)
        if t.delta_uri:
            out.print(f"    Delta    {t.delta_uri}", highlight=False, soft_wrap=True)
        if t.postgres_table:
            out.print(f"    Postgres {t.postgres_table}", highlight=False, soft_wrap=True)
        if t.silver_delta_uri:
            out.print(f"    silver   {t.silver_delta_uri}", highlight=False, soft_wrap=True)
        if t.silver_postgres_table:
            out.print(f"    silver   Postgres {t.silver_postgres_table}", highlight=False, soft_wrap=True)
    out.print(f"  Postgres URL: {db.display_url}", highlight=False, soft_wrap=True)


def _start_background(spec_file: Path, settings: Settings, run_id: str, db: Database, *, full_refresh: bool) -> None:
    """Start the run in a detached process; return once it has taken the run over."""
    cmd = [sys.executable, "-m", "engine.cli", "submit", str(spec_file.resolve()), "--attach-run", run_id,
           "--lakehouse", settings.lakehouse_uri]
    if full_refresh:
        cmd.append("--full-refresh")
    if settings.ray_address:
        cmd += ["--address", settings.ray_address]
    env = dict(os.environ)
    if settings.database_url:
        env["IPAI_DATABASE_URL"] = settings.database_url  # through the environment: never on a command line
    log_dir = private_dir(settings.home, "runs")
    with open_private(log_dir / f"{run_id}.log") as log_file:
        subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=env,
                         start_new_session=True)
    deadline = time.monotonic() + 60
    with db.connect() as conn:
        while time.monotonic() < deadline:
            if records.get_logs(conn, run_id) or records.get_run(conn, run_id)["status"] != "running":
                return
            time.sleep(0.2)
    err.print(f"[yellow]warning:[/yellow] the background run has not reported yet; see {log_dir / run_id}.log")


def _submit_ray_job(spec_file: Path, spec: ConnectorSpec, text: str, settings: Settings, options: Any, *,
                    wait: bool) -> None:
    """Record the run, then submit its driver as a Ray job to the head's dashboard; with `wait`, follow the job
    and exit as a local run would."""
    from dataclasses import replace

    from engine.core.secrets import secret_refs
    from engine.run import rayjobs
    from engine.run.driver import prepare_run

    address = str(settings.ray_address)
    rayjobs.job_env(settings)  # refuse a secret in the job's environment before anything is recorded
    jobs = rayjobs.Jobs(address)  # and an unreachable head or a missing token
    warning = rayjobs.lakehouse_warning(settings, address)
    if warning:
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)
    with control_plane(settings) as db:
        if next(secret_refs(spec), None) and db.session.get("ipai.vault_key"):
            err.print("[dim]the spec reads Vault secrets: the cluster hosts need the same Vault key "
                      "(IPAI_VAULT_KEY in Ray's environment, or ~/.ipai/vault.key)[/dim]", highlight=False)
        try:
            _, run_id = prepare_run(spec, text, db=db,
                                    options=replace(options, lease_seconds=rayjobs.JOB_START_LEASE_S))
        except RunConflict as exc:
            err.print(f"[red]refused:[/red] {exc}", highlight=False)
            raise typer.Exit(1) from None
        job_id = rayjobs.submission_id(run_id)
        with db.connect() as conn:
            records.set_ray_job(conn, run_id, job_id, holder=f"ray job {job_id}")
        try:
            jobs.submit(spec_file, run_id=run_id, settings=settings, full_refresh=options.full_refresh,
                        metadata={"ipai_run_id": run_id, "ipai_instance": f"{spec.name} ({spec.env})"})
        except IpaiError as exc:
            rayjobs.close_run(db, run_id, f"the Ray job could not be submitted: {exc}")
            raise
        out.print(f"run {run_id} submitted as Ray job {job_id} to {address} for {spec.name} ({spec.env})",
                  highlight=False, soft_wrap=True)
        if not wait:
            out.print(f"follow it with: ipai runs   |   ipai logs {run_id}   |   "
                      f"ray job logs --address {address} --follow {job_id}", highlight=False, soft_wrap=True)
            return
        _follow_ray_job(jobs, job_id, run_id, db)


def _follow_ray_job(jobs: Jobs, job_id: str, run_id: str, db: Database) -> None:
    """Show the job's status and logs until it ends; exit 0, 1, 75 or 130 by the run's outcome."""
    from engine.run.rayjobs import follow_run

    def on_logs(text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()

    def on_status(status: str) -> None:
        err.print(f"[dim]ray job {job_id}: {status}[/dim]", highlight=False, soft_wrap=True)

    def on_stopping() -> None:
        err.print("stopping the Ray job; committed partitions stay committed ...", highlight=False)

    try:
        run = follow_run(jobs, job_id, run_id, db, on_logs=on_logs, on_status=on_status, on_stopping=on_stopping)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    status = run["status"]
    if status == "succeeded":
        seconds = (run["ended_at"] - run["started_at"]).total_seconds() if run["ended_at"] else 0.0
        rate = run["rows_processed"] / seconds if seconds else 0
        out.print(f"[green]run {run_id} succeeded[/green] on Ray job {job_id}: {run['rows_processed']:,} rows in "
                  f"{seconds:.1f} s ({rate:,.0f} rows/s)", highlight=False, soft_wrap=True)
        for stream, rows in sorted((run["rows_by_stream"] or {}).items()):
            out.print(f"  {stream}: {rows:,} rows this run", highlight=False)
        out.print(f"  Postgres URL: {db.display_url}", highlight=False, soft_wrap=True)
        return
    message = f"run {run_id} {'failed: ' if status == 'failed' else ''}{run['error'] or status}"
    if status == "deferred":
        err.print(f"[yellow]deferred:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(75)
    if status == "cancelled":
        err.print(f"[yellow]cancelled:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)
