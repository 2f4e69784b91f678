"""`ipai pipeline`: validate and run pipeline files (a DAG of connector runs and gold refreshes), and report.

Exit codes: 2 for bad input (an invalid pipeline or spec, a `run` step naming no instance), 1 for a pipeline
that failed or a service that cannot be reached, 0 otherwise. `status` exits 0 whatever the pipeline's status:
it reports (read `status` in `--json`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from engine.cli.common import DatabaseOpt, LakehouseOpt, control_plane, err, out, resolve_settings
from engine.core.errors import SpecError

pipeline_app = typer.Typer(help="Pipelines: connector runs and gold refreshes in dependency order "
                           "(A and B in parallel, then gold).", no_args_is_help=True)

FileArg = Annotated[Path, typer.Argument(metavar="FILE", help="Pipeline YAML.", dir_okay=False)]
AddressOpt = Annotated[str | None, typer.Option("--address", help="Ray cluster address for local workers "
                       "(default: RAY_ADDRESS, else a local Ray).", show_default=False)]
NoWorkersOpt = Annotated[bool, typer.Option("--no-workers", help="Start no local workers: a worker fleet "
                         "(`ipai worker`) already serves the run queue.")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", min=1, help="At most this many local workers "
                       "(default: one per connector step running at the same time).", show_default=False)]
STATUS_STYLE = {"succeeded": "green", "failed": "red", "deferred": "yellow", "skipped": "yellow",
                "running": "cyan", "queued": "cyan"}


@pipeline_app.command("validate")
def pipeline_validate(
    files: Annotated[list[Path], typer.Argument(metavar="FILE...", help="Pipeline files.")],
    instances: Annotated[bool, typer.Option("--instances", help="Also check that the instances `run` steps "
                                            "name exist in the control plane.")] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Check pipeline files and the spec files they name; report every error with its path."""
    from engine.pipelines.definition import load_pipeline, topological
    from engine.pipelines.records import check_instances

    failed = 0
    for path in files:
        try:
            pipeline = load_pipeline(path)
            if instances:
                with control_plane(resolve_settings(database_url), quiet=True) as db, db.connect() as conn:
                    check_instances(conn, pipeline)
        except SpecError as exc:
            failed += 1
            err.print(str(exc), highlight=False, markup=False, soft_wrap=True)
            continue
        order = ", ".join(s.name for s in topological(pipeline))
        out.print(f"{path}: ok ({pipeline.name}: {len(pipeline.steps)} steps; in order {order})", highlight=False)
    if failed:
        raise typer.Exit(2)


@pipeline_app.command("run")
def pipeline_run(
    file: FileArg,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Run in the foreground and report each step, "
                                       "or start it in the background and print its id.")] = True,
    no_workers: NoWorkersOpt = False,
    workers: WorkersOpt = None,
    address: AddressOpt = None,
    database_url: DatabaseOpt = None,
    lakehouse: LakehouseOpt = None,
) -> None:
    """Run FILE: steps whose needs have succeeded run together; a failed step stops only its dependants."""
    from engine.pipelines.definition import load_pipeline
    from engine.pipelines.records import record_pipeline
    from engine.pipelines.runner import execute_pipeline, start_pipeline

    pipeline = load_pipeline(file)
    settings = resolve_settings(database_url, lakehouse, address)
    with control_plane(settings) as db:
        if not wait:
            run_id = start_pipeline(db, settings, pipeline, local_workers=not no_workers, max_workers=workers)
            out.print(f"pipeline run {run_id} started in the background ({pipeline.name})", highlight=False)
            out.print(f"follow it with: ipai pipeline status {run_id}", highlight=False)
            return
        run_id = record_pipeline(db, pipeline)
        how = "a worker fleet" if no_workers else "local workers, started as steps need them"
        err.print(f"pipeline run {run_id}: {pipeline.name}, {len(pipeline.steps)} steps, on {how}", highlight=False)
        try:
            status = execute_pipeline(db, settings, pipeline, run_id, local_workers=not no_workers,
                                      max_workers=workers, on_event=_print_event)
        except KeyboardInterrupt:
            err.print(f"[yellow]interrupted:[/yellow] pipeline run {run_id} stopped; runs not yet claimed were "
                      "withdrawn, runs under way finish (`ipai runs`)", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
    _print_status(status)
    if status["status"] != "succeeded":
        raise typer.Exit(1)


@pipeline_app.command("attach", hidden=True)
def pipeline_attach(
    pipeline_run_id: Annotated[str, typer.Argument(metavar="ID")],
    no_workers: NoWorkersOpt = False,
    workers: WorkersOpt = None,
) -> None:
    """Run a pipeline run recorded by `start_pipeline` (what `run --no-wait` starts in the background)."""
    from engine.pipelines.runner import attach_pipeline

    settings = resolve_settings()
    with control_plane(settings, quiet=True) as db:
        status = attach_pipeline(db, settings, pipeline_run_id, local_workers=not no_workers, max_workers=workers,
                                 on_event=_print_event)
    _print_status(status)
    if status["status"] != "succeeded":
        raise typer.Exit(1)


@pipeline_app.command("status")
def pipeline_status_cmd(
    pipeline_run_id: Annotated[str, typer.Argument(metavar="ID", help="Pipeline run id (or its first characters).")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Show a pipeline run: its status, which step failed and why, and each step with its connector run."""
    from engine.pipelines.records import pipeline_status

    with control_plane(resolve_settings(database_url), quiet=True) as db, db.connect() as conn:
        status = pipeline_status(conn, pipeline_run_id)
    if as_json:
        out.print(json.dumps(status), highlight=False, soft_wrap=True, markup=False)
        return
    _print_status(status)


def _print_event(step: Any) -> None:
    what = step.instance or step.target
    line = f"{step.name}: [{STATUS_STYLE.get(step.status, 'default')}]{step.status}[/]  {escape(what)}"
    if step.run_id:
        line += f"  run {step.run_id}"
    if step.rows is not None:
        line += f"  {step.rows:,} rows"
    if step.error:
        line += f"  {escape(step.error)}"
    err.print(line, highlight=False, soft_wrap=True)


def _print_status(status: dict[str, Any]) -> None:
    table = Table()
    for col in ("step", "does", "needs", "status", "run", "rows", "what happened"):
        table.add_column(col, overflow="fold")
    for s in status["steps"]:
        style = STATUS_STYLE.get(s["status"], "default")
        note = s["error"] or s["detail"] or ""
        table.add_row(s["name"], f"{s['kind']} {escape(s['instance'] or s['target'])}", ", ".join(s["needs"]),
                      f"[{style}]{s['status']}[/]", s["run_id"] or "", f"{s['rows']:,}" if s["rows"] is not None else "",
                      escape(note))
    out.print(table)
    state = status["status"]
    line = f"pipeline {status['pipeline']} run {status['pipeline_run_id']}: [{STATUS_STYLE.get(state, 'default')}]{state}[/]"
    if status["error"]:
        line += f": {escape(status['error'])}"
    if status["stale"]:
        line += " (no heartbeat for over a minute: the process running it has stopped)"
    out.print(line, highlight=False, soft_wrap=True)
