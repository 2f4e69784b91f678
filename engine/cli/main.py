"""The `ipai` command line: submit syncs, watch runs, read logs and state, validate specs.

This module builds the app from one module per command group (each imports only engine/cli/common.py and
the layers below); the groups import their heavy modules (Ray, connectors, layers) inside their commands, so
`ipai --help` stays fast. Every failure prints one message that says what to do and exits nonzero: 1 for a
failed run or an unreachable service, 2 for bad input (spec, arguments), 75 for a run deferred, 130 for a
run cancelled with Ctrl-C (engine/cli/common.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from engine.cli import cdc, db, demo, gold, instances, lakehouse, mcp_server, pipeline, ray, runs, secrets, silver
from engine.cli import spec, state, submit, tenants, workers
from engine.cli.common import errors_reported

app = typer.Typer(help="IPAI Data Connectors: parallel ELT into a Delta lakehouse and Postgres, on Ray.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)



def _print_version(asked: bool) -> None:
    if not asked:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        typer.echo(f"ipai {version('ipai-data-connectors')}")
    except PackageNotFoundError:
        typer.echo("ipai (not installed as a package: install the wheel, or `pip install -e .` in a checkout)")
    raise typer.Exit(0)


@app.callback()
def _root(_version: bool = typer.Option(False, "--version", help="Print the installed version and exit.",
                                        is_eager=True, callback=_print_version)) -> None:
    """IPAI Data Connectors: parallel ELT into a Delta lakehouse and Postgres, on Ray."""


# Registered in this order, which `ipai --help` lists: the commands, then the groups.
app.command()(submit.submit)
app.command()(runs.runs)
app.command()(runs.logs)
app.command()(db.sql)
app.command()(demo.demo)
app.command("run")(workers.run_queued)
app.command()(workers.worker)
app.command()(workers.scheduler)
app.command()(instances.instances)
app.command("mcp")(mcp_server.mcp_command)
app.add_typer(spec.spec_app, name="spec")
app.add_typer(state.state_app, name="state")
app.add_typer(db.db_app, name="db")
app.add_typer(ray.ray_app, name="ray")
app.add_typer(secrets.secret_app, name="secret")
app.add_typer(tenants.tenant_app, name="tenant")
app.add_typer(cdc.cdc_app, name="cdc")
app.add_typer(lakehouse.lakehouse_app, name="lakehouse")
app.add_typer(gold.gold_app, name="gold")
app.add_typer(silver.silver_app, name="silver")
app.add_typer(pipeline.pipeline_app, name="pipeline")
app.add_typer(mcp_server.token_app, name="token")


def main() -> None:
    """Entry point of the `ipai` console script."""
    # A Ray head started with `ray start` (ours: `ipai ray start`) wants its token, which Ray sends only
    # in token mode; Ray reads the mode when it is imported, so it is set here, before anything imports it.
    if "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").exists():
        os.environ["RAY_AUTH_MODE"] = "token"
    with errors_reported():
        app()


if __name__ == "__main__":
    main()
