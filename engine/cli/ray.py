"""`ipai ray`: a long-lived local Ray head (and its dashboard) that every ipai command reuses
(engine/run/localray.py starts and stops it)."""

from __future__ import annotations

from typing import Annotated

import typer

from engine.cli.common import out, resolve_settings

ray_app = typer.Typer(help="A long-lived local Ray (and its dashboard) that every ipai command reuses.",
                      no_args_is_help=True)


@ray_app.command("start")
def ray_start(
    dashboard_port: Annotated[int, typer.Option(help="Port of the Ray dashboard.")] = 8265,
) -> None:
    """Start a local Ray head in the background; later commands use it instead of starting their own."""
    from engine.run import localray

    home = resolve_settings().home
    head = localray.start(home, dashboard_port=dashboard_port)
    out.print(f"local Ray running at {head.address}; dashboard {head.dashboard_url}", highlight=False)
    out.print("ipai commands now use it (RAY_ADDRESS or --address still win); stop it with `ipai ray stop`")


@ray_app.command("status")
def ray_status() -> None:
    """Say whether the local Ray head is running, and where."""
    from engine.controlplane.settings import LocalHead

    head = LocalHead.read(resolve_settings().home)
    if head is None or not head.alive():
        out.print("no local Ray head: each run starts (and stops) its own; `ipai ray start` keeps one up")
        raise typer.Exit(1)
    out.print(f"local Ray running at {head.address}; dashboard {head.dashboard_url}", highlight=False)


@ray_app.command("stop")
def ray_stop() -> None:
    """Stop the local Ray head (only its own processes; other Ray clusters are left alone)."""
    from engine.run import localray

    n = localray.stop(resolve_settings().home)
    out.print(f"stopped the local Ray head ({n} processes)" if n else "no local Ray head was running")
