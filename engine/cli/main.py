"""The `ipai` command line: submit syncs, watch runs, read logs and state, validate specs.

Every failure prints one message that says what to do and exits nonzero: 1 for a failed run or an
unreachable service, 2 for bad input (spec, arguments), 130 for a run cancelled with Ctrl-C.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from engine.controlplane import records

from engine.controlplane import state
from engine.controlplane.settings import Settings
from engine.controlplane.db import Database, migrate, open_database
from engine.core.errors import ConfigError, IpaiError, NotFound, RunCancelled, RunConflict, RunDeferred, SpecError
from engine.core.spec import ConnectorSpec, redact_url

app = typer.Typer(help="IPAI Data Connectors: parallel ELT into a Delta lakehouse and Postgres, on Ray.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
spec_app = typer.Typer(help="Validate specs and print their JSON Schema.", no_args_is_help=True)
state_app = typer.Typer(help="Show or reset an instance's sync state (cursors, committed partitions).",
                        no_args_is_help=True)
db_app = typer.Typer(help="Control-plane database.", no_args_is_help=True)
ray_app = typer.Typer(help="A long-lived local Ray (and its dashboard) that every ipai command reuses.",
                      no_args_is_help=True)
app.add_typer(spec_app, name="spec")
app.add_typer(state_app, name="state")
app.add_typer(db_app, name="db")
app.add_typer(ray_app, name="ray")
secret_app = typer.Typer(help="Secrets in the Vault that specs reference as {secret: NAME}.", no_args_is_help=True)
app.add_typer(secret_app, name="secret")
tenant_app = typer.Typer(help="Tenants (admin): who owns connectors, runs and secrets.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
cdc_app = typer.Typer(help="Change data capture: the replication slots of PostgreSQL cdc streams.",
                      no_args_is_help=True)
app.add_typer(cdc_app, name="cdc")

# Piped output is read by scripts and agents: do not cut table cells to a pretend 80-column terminal.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

DatabaseOpt = Annotated[str | None, typer.Option("--database-url", help="Control-plane Postgres URL "
                        "(default: IPAI_DATABASE_URL, else the embedded PostgreSQL).", show_default=False)]
InstanceArg = Annotated[str, typer.Argument(metavar="INSTANCE", help="Instance name or id.")]
EnvOpt = Annotated[str | None, typer.Option(help="Environment, when the name exists in several.")]
YesOpt = Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")]
LakehouseOpt = Annotated[str | None, typer.Option("--lakehouse", help="Lakehouse folder or s3:// URI "
                         "(default: IPAI_LAKEHOUSE_URI, else <IPAI_HOME>/lakehouse).", show_default=False)]


def main() -> None:
    """Entry point of the `ipai` console script."""
    # A Ray head started with `ray start` (ours: `ipai ray start`) wants its token, which Ray sends only
    # in token mode; Ray reads the mode when it is imported, so it is set here, before anything imports it.
    if "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").exists():
        os.environ["RAY_AUTH_MODE"] = "token"
    try:
        app()
    except RunDeferred as exc:
        err.print(f"[yellow]deferred:[/yellow] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(75)  # EX_TEMPFAIL: try again later
    except IpaiError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2 if isinstance(exc, SpecError) else 1)
    except psycopg.Error as exc:
        reason = redact_url(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        err.print(f"[red]database error:[/red] {escape(reason)}", highlight=False, soft_wrap=True)
        sys.exit(1)


@contextmanager
def _database(settings: Settings, *, quiet: bool = False, create_key: bool = False) -> Iterator[Database]:
    """The control plane, migrated, acting for the settings' tenant and carrying the Vault key if any."""
    from engine.controlplane.vault import is_compat_vault, vault_session

    db = open_database(settings)
    if db.embedded_pgdata and not quiet:
        err.print(f"[dim]control plane: embedded PostgreSQL in {db.embedded_pgdata}[/dim]", highlight=False)
    with db.connect() as conn:
        migrate(conn)
        session = vault_session(settings.home, create=create_key and is_compat_vault(conn))
        if settings.tenant != "local":
            row = conn.execute("select id from ipai_tenants where name = %s or id::text = %s",
                               (settings.tenant, settings.tenant)).fetchone()
            if row is None:
                raise ConfigError(f"no tenant {settings.tenant!r} (IPAI_TENANT); create it with "
                                  f"`ipai tenant create {settings.tenant}` or unset IPAI_TENANT for the local one")
            session["ipai.tenant_id"] = str(row[0])
    yield db.with_session(session)


def _settings(database_url: str | None = None, lakehouse: str | None = None, address: str | None = None) -> Settings:
    return Settings.resolve(database_url=database_url, lakehouse_uri=lakehouse, ray_address=address)


def _load(path: Path) -> tuple[ConnectorSpec, str]:
    from connectors.specload import load_spec

    spec = load_spec(path)
    return spec, path.read_text(encoding="utf-8")


# -- submit ---------------------------------------------------------------------------------------------


@app.command()
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

    spec, text = _load(spec_file)
    settings = _settings(database_url, lakehouse, address)
    options = RunOptions(full_refresh=full_refresh, dashboard=dashboard)
    if attach_run is None and rayjobs.is_jobs_address(settings.ray_address):
        _submit_ray_job(spec_file, spec, text, settings, options, wait=wait)
        return
    with _database(settings, quiet=attach_run is not None) as db:
        if attach_run:
            instance_id = str(records.get_run(db.connect(), attach_run)["instance_id"])
            _execute(spec, db, settings, options, instance_id, attach_run, show=False)
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
            _execute(spec, db, settings, options, instance_id, run_id, show=True)
            return
        _start_background(spec_file, settings, run_id, db, full_refresh=full_refresh)
        out.print(f"run {run_id} started in the background for {spec.name} ({spec.env})")
        out.print(f"follow it with: ipai runs   |   ipai logs {run_id}")


def _execute(spec: ConnectorSpec, db: Database, settings: Settings, options: Any, instance_id: str, run_id: str,
             *, show: bool) -> None:
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
    cmd = [sys.executable, "-m", "engine.cli.main", "submit", str(spec_file.resolve()), "--attach-run", run_id,
           "--lakehouse", settings.lakehouse_uri]
    if full_refresh:
        cmd.append("--full-refresh")
    if settings.ray_address:
        cmd += ["--address", settings.ray_address]
    env = dict(os.environ)
    if settings.database_url:
        env["IPAI_DATABASE_URL"] = settings.database_url  # through the environment: never on a command line
    log_dir = settings.home / "runs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{run_id}.log", "ab") as log_file:
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

    from engine.run import rayjobs
    from engine.run.driver import prepare_run
    from engine.core.secrets import secret_refs

    address = str(settings.ray_address)
    rayjobs.job_env(settings)  # refuse a secret in the job's environment before anything is recorded
    jobs = rayjobs.Jobs(address)  # and an unreachable head or a missing token
    warning = rayjobs.lakehouse_warning(settings, address)
    if warning:
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)
    with _database(settings) as db:
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
            _close_job_run(db, run_id, f"the Ray job could not be submitted: {exc}")
            raise
        out.print(f"run {run_id} submitted as Ray job {job_id} to {address} for {spec.name} ({spec.env})",
                  highlight=False, soft_wrap=True)
        if not wait:
            out.print(f"follow it with: ipai runs   |   ipai logs {run_id}   |   "
                      f"ray job logs --address {address} --follow {job_id}", highlight=False, soft_wrap=True)
            return
        _follow_ray_job(jobs, job_id, run_id, db)


def _follow_ray_job(jobs: Any, job_id: str, run_id: str, db: Database) -> None:
    """Show the job's status and logs until it ends; exit 0, 1, 75 or 130 by the run's outcome."""
    from engine.run.rayjobs import summary as rayjobs_summary

    def on_logs(text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()

    def on_status(status: str) -> None:
        err.print(f"[dim]ray job {job_id}: {status}[/dim]", highlight=False, soft_wrap=True)

    try:
        outcome = jobs.follow(job_id, on_logs=on_logs, on_status=on_status)
    except KeyboardInterrupt:
        err.print("stopping the Ray job; committed partitions stay committed ...", highlight=False)
        jobs.stop(job_id)
        try:
            outcome = jobs.follow(job_id, on_logs=on_logs, on_status=on_status)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
    with db.connect() as conn:
        run = records.get_run(conn, run_id)
    if run["status"] == "running":
        # The job ended without its driver closing the run: it never started (runtime environment, `python`
        # not found on the head) or was killed. Said now rather than when the long start lease runs out.
        _close_job_run(db, run_id, rayjobs_summary(job_id, outcome))
        with db.connect() as conn:
            run = records.get_run(conn, run_id)
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


def _close_job_run(db: Database, run_id: str, error: str) -> None:
    """Mark a job-submitted run failed whose driver never took it over."""
    from engine.core.errors import LeaseLost

    with db.connect() as conn:
        try:
            records.finish_run(conn, run_id, status="failed", error=error)
            records.log(conn, run_id, "error", "run.failed", error)
        except LeaseLost:
            pass  # the driver (or a reaper) closed it after all; its verdict stands


# -- runs, logs, state ----------------------------------------------------------------------------------


@app.command()
def runs(
    instance: Annotated[str | None, typer.Option("--instance", help="Only this instance (name or id).")] = None,
    limit: Annotated[int, typer.Option(help="How many runs to show.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """List recent runs, newest first."""
    with _database(_settings(database_url)) as db, db.connect() as conn:
        instance_id = str(records.find_instance(conn, instance)["id"]) if instance else None
        rows = records.list_runs(conn, instance_id=instance_id, limit=limit)
    if as_json:
        for r in rows:
            out.print(json.dumps({k: r[k] for k in ("id", "instance_name", "env", "status", "started_at", "ended_at",
                                                    "rows_processed", "partitions_done", "partitions_total",
                                                    "error", "metrics", "ray_job_id")}, default=str), highlight=False, soft_wrap=True)
        return
    if not rows:
        out.print("no runs yet: start one with `ipai submit SPEC --wait`")
        return
    table = Table()
    # The Ray job column only when a listed run ran as one: most runs are local, and the table is wide already.
    jobs = any(r["ray_job_id"] for r in rows)
    for col in ("run", "instance", "status", "started", "seconds", "rows", "partitions", "error",
                *(("ray job",) if jobs else ())):
        table.add_column(col, overflow="fold")
    for r in rows:
        seconds = (r["ended_at"] - r["started_at"]).total_seconds() if r["ended_at"] and r["started_at"] else None
        table.add_row(str(r["id"]), f"{r['instance_name']} ({r['env']})", r["status"],
                      r["started_at"].strftime("%Y-%m-%d %H:%M:%S") if r["started_at"] else "-",
                      f"{seconds:.1f}" if seconds is not None else "-", f"{r['rows_processed']:,}",
                      f"{r['partitions_done']}/{r['partitions_total']}", (r["error"] or "")[:80],
                      *((r["ray_job_id"] or "-",) if jobs else ()))
    out.print(table)


@app.command()
def logs(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="Run id (or a unique prefix).")],
    database_url: DatabaseOpt = None,
) -> None:
    """Print a run's structured logs, one JSON object per line."""
    with _database(_settings(database_url), quiet=True) as db, db.connect() as conn:
        run = records.get_run(conn, run_id)
        for record in records.get_logs(conn, str(run["id"])):
            out.print(records.format_log(record), highlight=False, soft_wrap=True, markup=False)


@state_app.command("show")
def state_show(
    instance: InstanceArg,
    env: EnvOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Show each stream's cursor, committed partitions and any unfinished extraction."""
    with _database(_settings(database_url), quiet=True) as db, db.connect() as conn:
        inst = records.find_instance(conn, instance, env=env)
        rows = state.show(conn, str(inst["id"]))
    table = Table(title=f"{inst['name']} ({inst['env']})", title_justify="left")
    for col in ("stream", "cursor", "partitions committed", "rows committed", "unfinished extraction"):
        table.add_column(col)
    for r in rows:
        open_parts = r["open_extraction_partitions"]
        table.add_row(r["stream"], r["cursor"] or "-", str(r["partitions_committed"]), f"{r['rows_committed']:,}",
                      f"{open_parts} partitions planned" if open_parts is not None else "-")
    out.print(table if rows else f"{inst['name']}: no state yet")


@state_app.command("reset")
def state_reset(
    instance: InstanceArg,
    stream: Annotated[str | None, typer.Option(help="Only this stream.")] = None,
    env: EnvOpt = None,
    yes: YesOpt = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Forget cursors and committed partitions: the next run re-reads from the beginning."""
    with _database(_settings(database_url), quiet=True) as db, db.connect() as conn:
        inst = records.find_instance(conn, instance, env=env)
        what = f"stream {stream} of {inst['name']}" if stream else f"every stream of {inst['name']}"
        if not yes and not typer.confirm(f"Reset the sync state of {what} ({inst['env']})?"):
            raise typer.Exit(1)
        n = state.reset(conn, str(inst["id"]), stream)
    out.print(f"reset {what}: {n} state rows removed; bronze data stays, the next run re-reads from the start")


@cdc_app.command("drop")
def cdc_drop(
    instance: InstanceArg,
    stream: Annotated[str | None, typer.Option(help="Only this stream.")] = None,
    env: EnvOpt = None,
    yes: YesOpt = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Remove the replication slots and publications of INSTANCE's cdc streams, so the source server frees the
    WAL they hold; their cursors are reset and the next run takes a new snapshot. Slots of others are refused."""
    from connectors.database.cdc import replication
    from connectors.database.stream import DatabaseSpec, streams
    from engine.controlplane.vault import read_as_admin
    from engine.core.spec import SecretRef
    from connectors.specload import parse_spec

    with _database(_settings(database_url), quiet=True) as db, db.connect() as conn:
        inst = records.find_instance(conn, instance, env=env)
        row = conn.execute("select yaml_spec from connector_definitions where id = %s",
                           (inst["definition_id"],)).fetchone()
        spec = parse_spec(row[0] if row else "", filename=f"instance {inst['name']}")
        if not isinstance(spec, DatabaseSpec):
            raise ConfigError(f"instance {inst['name']} reads {spec.source_type}: only database sources have cdc streams")
        chosen = [s for s in streams(spec) if s.cdc and stream in (None, s.name)]
        if not chosen:
            raise ConfigError(f"instance {inst['name']} has no cdc stream" + (f" named {stream}" if stream else ""))
        slots = ", ".join(replication.slot_name(s) for s in chosen)
        if not yes and not typer.confirm(f"Drop replication slot(s) {slots} of {inst['name']} ({inst['env']})? "
                                         "The next run takes a new snapshot."):
            raise typer.Exit(1)
        url = spec.source.url
        if isinstance(url, SecretRef):
            value = read_as_admin(conn, str(inst["tenant_id"]), url.secret)
            if value is None:
                raise ConfigError(f"source.url: secret {url.secret!r} is not set in the Vault")
            url = value
        for s in chosen:
            removed = replication.drop(url, replication.slot_name(s), str(inst["id"]))
            state.reset(conn, str(inst["id"]), s.name)
            out.print(f"{s.name}: " + (f"dropped {' and '.join(removed)}" if removed else "no slot to drop")
                      + "; the next run takes a new snapshot", highlight=False)


# -- db, spec -------------------------------------------------------------------------------------------


@db_app.command("migrate")
def db_migrate(database_url: DatabaseOpt = None) -> None:
    """Apply control-plane migrations not yet applied (safe to repeat)."""
    db = open_database(_settings(database_url))
    with db.connect() as conn:
        applied = migrate(conn)
    out.print(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied
              else f"up to date ({db.display_url})", highlight=False, soft_wrap=True)


@spec_app.command("validate")
def spec_validate(files: Annotated[list[Path], typer.Argument(metavar="FILE...", help="Spec files.")]) -> None:
    """Check spec files; report every error with its line, column and field path."""
    from connectors.specload import load_spec

    failed = 0
    for path in files:
        try:
            spec = load_spec(path)
        except SpecError as exc:
            failed += 1
            err.print(str(exc), highlight=False, markup=False, soft_wrap=True)
            continue
        out.print(f"{path}: ok ({spec.source_type}, {spec.sync_mode}, "
                  f"{len(spec.streams) or 'all'} stream(s))", highlight=False)
    if failed:
        raise typer.Exit(2)


@spec_app.command("schema")
def spec_schema(
    write: Annotated[Path | None, typer.Option("--write", help="Write to this file instead of printing.")] = None,
) -> None:
    """Print the JSON Schema of connector specs (the source of `specs/schema.json`)."""
    from connectors.specload import spec_json_schema_text

    text = spec_json_schema_text()
    if write:
        write.write_text(text, encoding="utf-8")
        out.print(f"wrote {write}")
    else:
        sys.stdout.write(text)


@app.command()
def sql(
    query: Annotated[str, typer.Argument(metavar="QUERY", help="One SQL statement.")],
    limit: Annotated[int, typer.Option(help="Rows to show at most.")] = 50,
    database_url: DatabaseOpt = None,
) -> None:
    """Run a query on the control-plane database (the embedded one starts for it), e.g. on bronze tables."""
    with _database(_settings(database_url), quiet=True) as db, db.connect() as conn:
        _print_query(conn, query, limit=limit)


def _print_query(conn: psycopg.Connection[Any], query: str, *, limit: int) -> None:
    cur = conn.execute(query)  # type: ignore[arg-type]  # the user's own statement, on their own database
    if cur.description is None:
        out.print(f"ok ({cur.rowcount} rows affected)")
        return
    table = Table()
    for col in cur.description:
        table.add_column(col.name)
    rows = cur.fetchmany(limit)
    for row in rows:
        table.add_row(*("null" if v is None else str(v) for v in row))
    out.print(table)
    if cur.fetchone() is not None:
        out.print(f"(first {limit} rows shown)")


@ray_app.command("start")
def ray_start(
    dashboard_port: Annotated[int, typer.Option(help="Port of the Ray dashboard.")] = 8265,
) -> None:
    """Start a local Ray head in the background; later commands use it instead of starting their own."""
    from engine.run import localray

    home = _settings().home
    head = localray.start(home, dashboard_port=dashboard_port)
    out.print(f"local Ray running at {head.address}; dashboard {head.dashboard_url}", highlight=False)
    out.print("ipai commands now use it (RAY_ADDRESS or --address still win); stop it with `ipai ray stop`")


@ray_app.command("status")
def ray_status() -> None:
    """Say whether the local Ray head is running, and where."""
    from engine.controlplane.settings import LocalHead

    head = LocalHead.read(_settings().home)
    if head is None or not head.alive():
        out.print("no local Ray head: each run starts (and stops) its own; `ipai ray start` keeps one up")
        raise typer.Exit(1)
    out.print(f"local Ray running at {head.address}; dashboard {head.dashboard_url}", highlight=False)


@ray_app.command("stop")
def ray_stop() -> None:
    """Stop the local Ray head (only its own processes; other Ray clusters are left alone)."""
    from engine.run import localray

    n = localray.stop(_settings().home)
    out.print(f"stopped the local Ray head ({n} processes)" if n else "no local Ray head was running")


# -- demo -----------------------------------------------------------------------------------------------


@app.command()
def demo(
    rows: Annotated[int, typer.Option(help="About how many rows the sample shop has in all.")] = 1_000_000,
    database_url: DatabaseOpt = None,
    lakehouse: LakehouseOpt = None,
) -> None:
    """Sync the sample shop twice (full, then incremental a few days later) and show where the data landed."""
    from engine.run.driver import RunOptions, prepare_run
    from connectors.specload import parse_spec

    settings = _settings(database_url, lakehouse)
    orders = max(1_000, rows * 10 // 36)  # ~0.1 customers and ~2.5 lines per order
    with _database(settings) as db:
        for day, title in ((25, "first sync: the shop as of day 25 (everything is new)"),
                           (30, "second sync: five days later, only new and changed rows")):
            text = _demo_spec(orders, day)
            spec = parse_spec(text, filename="<demo>")
            out.rule(title)
            options = RunOptions(trigger="demo")
            instance_id, run_id = prepare_run(spec, text, db=db, options=options)
            _execute(spec, db, settings, options, instance_id, run_id, show=True)
        peek = ("select status, count(*) as orders, sum(amount) as amount from bronze.raw_demo_shop_orders"
                f" where _ipai_run_id = '{run_id}' group by status order by 2 desc")
        latest = ("select status, count(*) as orders, sum(amount) as amount from silver.demo_shop_orders"
                  " where not _ipai_deleted group by status order by 2 desc")
        for title, query in (("what the second sync brought: orders by status (ipai sql)", peek),
                             ("silver: every order once, as it is now (ipai sql)", latest)):
            out.rule(title)
            out.print(query, highlight=False, soft_wrap=True)
            with db.connect() as conn:
                _print_query(conn, query, limit=10)
    out.print(f"lakehouse: {settings.lakehouse_uri}   control plane: {db.display_url}", highlight=False)
    if db.embedded_pgdata:
        out.print("the embedded PostgreSQL runs while an ipai command does; query it with `ipai sql`")
    out.print("next: `ipai runs`, `ipai state show demo_shop`, `ipai logs RUN_ID`, `ipai sql \"select ...\"`")


def _demo_spec(orders: int, today: int) -> str:
    return (
        "name: demo_shop\nsource_type: sample\nsync_mode: incremental\nlayers: [bronze, silver]\n"
        f"source:\n  seed: 7\n  days: 30\n  today: {today}\n  customers: {max(100, orders // 10)}\n"
        f"  orders: {orders}\n  partition_rows: 250000\n"
    )




# -- secret ---------------------------------------------------------------------------------------------


@secret_app.command("set")
def secret_set(
    name: Annotated[str, typer.Argument(help="Secret name, as specs reference it ({secret: NAME}).")],
    database_url: DatabaseOpt = None,
) -> None:
    """Store a secret in the Vault, read from stdin (never from the command line, where shells and `ps` keep it)."""
    from engine.controlplane.vault import store_secret

    if sys.stdin.isatty():
        import getpass

        value = getpass.getpass(f"value of {name} (not echoed): ")
    else:
        value = sys.stdin.read()
    value = value.rstrip("\r\n")
    if not value:
        raise ConfigError(f"no value for secret {name!r} on stdin; pipe it in: `ipai secret set {name} < file`")
    with _database(_settings(database_url), quiet=True, create_key=True) as db, db.connect() as conn:
        created = store_secret(conn, name, value)
    out.print(f"secret {name} {'stored' if created else 'replaced'} in the Vault", highlight=False)


@secret_app.command("list")
def secret_list(database_url: DatabaseOpt = None) -> None:
    """List the names of stored secrets (never their values)."""
    from engine.controlplane.vault import list_secrets

    with _database(_settings(database_url), quiet=True) as db, db.connect() as conn:
        for item in list_secrets(conn):
            out.print(f"{item['name']}  (updated {str(item['updated_at'])[:19]})", highlight=False)


# -- queue: run, worker, scheduler, instances, tenants ----------------------------------------------------


@app.command("run")
def run_queued(
    instance: InstanceArg,
    env: EnvOpt = None,
    full_refresh: Annotated[bool, typer.Option("--full-refresh", help="Re-read everything.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until a worker has finished the run.")] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Queue a run of INSTANCE for the workers (`ipai worker`); print its run id (as `connector_run` does)."""
    with _database(_settings(database_url), quiet=True) as db, db.connect() as conn:
        result = _rpc(conn, "select public.connector_run(%s, %s, %s)", (instance, env, full_refresh))
        run_id = result["run_id"]
        out.print(f"run {run_id} {'queued' if result['created'] else 'already ' + result['status']}"
                  f" for {instance}", highlight=False)
        if not wait:
            return
        while True:
            run = _rpc(conn, "select public.connector_status(%s)", (run_id,))["run"]
            if run["status"] not in ("queued", "running"):
                break
            time.sleep(1.0)
    out.print(f"run {run_id} {run['status']}: {run['rows_processed']:,} rows"
              + (f"; {run['error']}" if run["error"] else ""), highlight=False, soft_wrap=True)
    if run["status"] != "succeeded":
        raise typer.Exit(75 if run["status"] == "deferred" else 1)


def _rpc(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...]) -> dict[str, Any]:
    row = conn.execute(sql, params).fetchone()  # type: ignore[arg-type]  # our own fixed statements
    result: dict[str, Any] = row[0] if row else {}
    if not result.get("ok"):
        error = result.get("error") or {}
        raise IpaiError(f"{error.get('code', 'error')}: {error.get('message', 'no answer')}")
    return result


@app.command()
def worker(
    lease: Annotated[float, typer.Option(help="Seconds a run's lease lasts between heartbeats.")] = 60.0,
    poll: Annotated[float, typer.Option(help="Seconds between looks at the queue (a NOTIFY wakes it sooner).")] = 2.0,
    max_runs: Annotated[int | None, typer.Option(help="Stop after this many runs.")] = None,
    idle_exit: Annotated[float | None, typer.Option(help="Stop after this many seconds without work.")] = None,
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster address "
                       "(default: RAY_ADDRESS, else a local Ray).", show_default=False)] = None,
    database_url: DatabaseOpt = None,
    lakehouse: LakehouseOpt = None,
) -> None:
    """Take queued runs and run them on Ray, one at a time, until stopped (SIGTERM finishes the current run)."""
    from engine.run.worker import Worker

    Worker(_settings(database_url, lakehouse, address), lease_s=lease, poll_s=poll, max_runs=max_runs,
           idle_exit_s=idle_exit).serve()


@app.command()
def scheduler(
    interval: Annotated[float, typer.Option(help="Seconds between looks at the schedules.")] = 5.0,
    ticks: Annotated[int | None, typer.Option(hidden=True)] = None,
    simulate_from: Annotated[str | None, typer.Option(hidden=True, help="Drills: start a fast clock here (ISO).")] = None,
    speed: Annotated[float, typer.Option(hidden=True, help="Drills: how much faster the clock runs.")] = 1.0,
    database_url: DatabaseOpt = None,
) -> None:
    """Enqueue each enabled instance's runs when its cron schedule comes due (several may run: each fire time
    is enqueued once)."""
    from datetime import datetime

    from engine.controlplane.scheduler import Scheduler, fast_clock

    clock = fast_clock(datetime.fromisoformat(simulate_from), speed) if simulate_from else (lambda: None)
    Scheduler(_settings(database_url), interval_s=interval, clock=clock).serve(ticks=ticks)


@app.command()
def instances(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """List connector instances with their schedule, next run time and latest run."""
    from engine.controlplane.scheduler import next_runs

    with _database(_settings(database_url), quiet=True) as db, db.connect() as conn:
        rows = next_runs(conn)
    if as_json:
        for r in rows:
            out.print(json.dumps(r, default=str), highlight=False, soft_wrap=True)
        return
    if not rows:
        out.print("no instances yet: `ipai submit SPEC` or the connector_create RPC makes one")
        return
    table = Table()
    for col in ("instance", "source", "version", "status", "schedule (UTC)", "next run", "last run"):
        table.add_column(col, overflow="fold")
    for r in rows:
        nxt = r["next_run_at"].strftime("%Y-%m-%d %H:%M") if r["next_run_at"] else "-"
        last = f"{r['last_status']} {r['last_at']:%Y-%m-%d %H:%M}" if r["last_status"] else "-"
        table.add_row(f"{r['name']} ({r['env']})", r["type"], str(r["version"]), r["status"], r["schedule"] or "manual",
                      nxt, last)
    out.print(table)


@tenant_app.command("create")
def tenant_create(
    name: Annotated[str, typer.Argument(help="Tenant name: lower case letters, digits and _.")],
    database_url: DatabaseOpt = None,
) -> None:
    """Create a tenant (an admin command: needs the database owner's connection)."""
    with _database(_settings(database_url), quiet=True) as db, db.connect() as conn:
        try:
            row = conn.execute("insert into ipai_tenants (name) values (%s) on conflict (name) do update"
                               " set name = excluded.name returning id", (name,)).fetchone()
        except psycopg.errors.CheckViolation:
            raise ConfigError(f"tenant name {name!r}: lower case letters, digits and _, starting with a letter") from None
    assert row is not None
    out.print(f"tenant {name}: {row[0]}", highlight=False)


@tenant_app.command("add-user")
def tenant_add_user(
    name: Annotated[str, typer.Argument(help="Tenant name or id.")],
    user_id: Annotated[str, typer.Argument(help="The user's Supabase auth id (the JWT's sub).")],
    owner: Annotated[bool, typer.Option("--owner", help="Make the user an owner of the tenant.")] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Let a Supabase user see and run the tenant's connectors."""
    with _database(_settings(database_url), quiet=True) as db, db.connect() as conn:
        row = conn.execute("select id from ipai_tenants where name = %s or id::text = %s", (name, name)).fetchone()
        if row is None:
            raise NotFound(f"no tenant {name!r}; `ipai tenant create {name}` makes it")
        try:
            conn.execute("insert into ipai_tenant_members (tenant_id, user_id, role) values (%s, %s::uuid, %s)"
                         " on conflict (tenant_id, user_id) do update set role = excluded.role",
                         (row[0], user_id, "owner" if owner else "member"))
        except psycopg.errors.InvalidTextRepresentation:
            raise ConfigError(f"user id {user_id!r} is not a uuid (the sub claim of the user's JWT)") from None
    out.print(f"user {user_id} added to tenant {name}", highlight=False)


from engine.cli.lakehouse import lakehouse_app  # noqa: E402  (it reuses this module's helpers)
app.add_typer(lakehouse_app, name="lakehouse")
from engine.cli.gold import gold_app  # noqa: E402  (it reuses this module's helpers)
app.add_typer(gold_app, name="gold")
from engine.cli.silver import silver_app  # noqa: E402  (it reuses this module's helpers)
app.add_typer(silver_app, name="silver")
from engine.cli.pipeline import pipeline_app  # noqa: E402  (it reuses this module's helpers)
app.add_typer(pipeline_app, name="pipeline")
from engine.cli.mcp_server import mcp_command, token_app  # noqa: E402  (it reuses this module's helpers)
app.command("mcp")(mcp_command)
app.add_typer(token_app, name="token")

if __name__ == "__main__":
    main()
