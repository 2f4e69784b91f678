"""`ipai mcp` (the MCP server for agents, mcp/server.py) and `ipai token` (its HTTP bearer tokens)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from engine.cli.common import DatabaseOpt, LakehouseOpt, control_plane, err, out, resolve_settings
from engine.controlplane import tokens
from engine.controlplane.settings import Settings
from engine.core.errors import ConfigError
from engine.core.private import open_private, private_dir
from engine.core.urls import on_this_machine

SERVER_FILE = Path(__file__).resolve().parents[2] / "mcp" / "server.py"
WORKER_STOP_S = 30.0

token_app = typer.Typer(help="Bearer tokens for agents using `ipai mcp --http` (admin): one tenant each.",
                        no_args_is_help=True)


def load_server() -> ModuleType:
    """mcp/server.py, loaded by path: the folder must not become a package named `mcp` (FastMCP's library)."""
    if not SERVER_FILE.exists():
        raise ConfigError(f"{SERVER_FILE} is missing: `ipai mcp` runs from a checkout of the platform "
                          "(pip install -e .)")
    spec = importlib.util.spec_from_file_location("ipai_mcp_server", SERVER_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def mcp_command(
    http: Annotated[bool, typer.Option("--http", help="Serve streamable HTTP at http://HOST:PORT/mcp (bearer "
                                       "tokens from `ipai token create`) instead of stdio.")] = False,
    host: Annotated[str, typer.Option(help="HTTP: address to listen on. Beyond loopback only with "
                                      "--tls-cert/--tls-key, or --insecure behind a proxy that terminates TLS.")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP: port.")] = 8765,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="HTTP: serve HTTPS with this certificate "
                        "(PEM; with --tls-key).", show_default=False)] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="HTTP: the certificate's private key (PEM).",
                       show_default=False)] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="HTTP: listen beyond loopback without TLS, for a "
                        "reverse proxy that terminates TLS in front of the server. Bearer tokens travel in clear "
                        "between the proxy and the server.")] = False,
    requests_per_minute: Annotated[int, typer.Option("--requests-per-minute", help="HTTP: tool calls one token "
                                   "may make per minute; more are answered rate_limited (0: no limit).")] = 120,
    workers: Annotated[int, typer.Option(help="Local `ipai worker` processes to run queued runs while the "
                                         "server is up; 0 when workers already serve the queue (pipelines "
                                         "then start none either).")] = 1,
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster address for those workers "
                       "(default: RAY_ADDRESS, else a local Ray).", show_default=False)] = None,
    database_url: DatabaseOpt = None,
    lakehouse: LakehouseOpt = None,
) -> None:
    """Serve the platform's tools to agents over MCP: connector_list, connector_validate, connector_create,
    connector_run, connector_status, connector_logs (the PRD's connector:list ...), pipeline_validate,
    pipeline_run, pipeline_status."""
    if http:
        try:
            warning = check_bind(host, tls_cert=tls_cert, tls_key=tls_key, insecure=insecure)
        except ConfigError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        if warning:
            err.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)
        if requests_per_minute < 0:
            err.print("[red]error:[/red] --requests-per-minute must be 0 (no limit) or more", highlight=False)
            raise typer.Exit(2)
    settings = resolve_settings(database_url, lakehouse, address)
    server = load_server()
    tls = (str(tls_cert), str(tls_key)) if tls_cert and tls_key else None
    with _workers(settings, workers):
        if http:
            err.print(f"MCP over HTTP at {'https' if tls else 'http'}://{host}:{port}/mcp "
                      "(Authorization: Bearer <token>)", highlight=False)
        server.serve(settings, http=http, host=host, port=port, pipeline_workers=workers > 0, tls=tls,
                     requests_per_minute=requests_per_minute)


def check_bind(host: str, *, tls_cert: Path | None, tls_key: Path | None, insecure: bool) -> str | None:
    """Refuse to serve bearer tokens in clear beyond this machine; return a warning for `--insecure`.

    Called before anything listens: a refused address is never bound."""
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together: give both (PEM files) or neither")
    for path in (tls_cert, tls_key):
        if path is not None and not path.is_file():
            raise ConfigError(f"--tls-cert/--tls-key {path}: no such file")
    if tls_cert is not None or is_loopback(host):
        return None
    if insecure:
        return (f"serving plain HTTP on {host} (--insecure): bearer tokens travel in clear; only do this behind a "
                "proxy that terminates TLS and reaches this server over a private network")
    raise ConfigError(f"--host {host} listens beyond this machine, and bearer tokens would travel in clear: give "
                      "--tls-cert and --tls-key, or --insecure when a reverse proxy in front terminates TLS")


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine only (localhost, 127.0.0.0/8, ::1); a name other than localhost is not."""
    return bool(host) and not host.startswith(("/", "@")) and on_this_machine(host)


@contextmanager
def _workers(settings: Settings, count: int) -> Iterator[None]:
    """Start `count` workers for the server's lifetime; on exit they finish their current run and stop."""
    procs: list[subprocess.Popen[bytes]] = []
    env = dict(os.environ)
    if settings.database_url:
        env["IPAI_DATABASE_URL"] = settings.database_url  # through the environment: never on a command line
    env["IPAI_LAKEHOUSE_URI"] = settings.lakehouse_uri
    if settings.ray_address:
        env["RAY_ADDRESS"] = settings.ray_address
    logs = private_dir(settings.home, "logs")
    try:
        for n in range(count):
            with open_private(logs / f"mcp-worker-{n}.log") as log_file:
                # stdout is the MCP protocol's channel on stdio: the workers write to their own files.
                procs.append(subprocess.Popen([sys.executable, "-m", "engine.cli", "worker"], env=env,
                                              stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file))
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=WORKER_STOP_S)
            except subprocess.TimeoutExpired:
                proc.kill()


TenantOpt = Annotated[str | None, typer.Option("--tenant", help="Tenant name or id (default: IPAI_TENANT, "
                      "else local).", show_default=False)]


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="What the token is for (e.g. n8n, otto): letters, digits, _ and -.")],
    tenant: TenantOpt = None,
    expires: Annotated[str | None, typer.Option("--expires", help="Refuse the token after this long: 12h, 30d, "
                       "8w (default: valid until revoked).", show_default=False)] = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Make a bearer token for the tenant; it is printed once (only its hash is kept)."""
    try:
        expires_in = tokens.parse_expiry(expires) if expires is not None else None
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    settings = resolve_settings(database_url)
    with control_plane(settings, quiet=True) as db, db.connect() as conn:
        token = tokens.create_token(conn, tenant or settings.tenant, name, expires_in=expires_in)
    out.print(token, highlight=False)
    until = f", valid for {expires}" if expires else ""
    err.print(f"token {name} for tenant {tenant or settings.tenant}{until}: shown once, store it now "
              "(agents send it as Authorization: Bearer <token>)", highlight=False)


@token_app.command("list")
def token_list(database_url: DatabaseOpt = None) -> None:
    """List live tokens (names and use, never the tokens)."""
    with control_plane(resolve_settings(database_url), quiet=True) as db, db.connect() as conn:
        rows = tokens.list_tokens(conn)
    if not rows:
        out.print("no tokens: `ipai token create NAME` makes one")
        return
    table = Table()
    for col in ("tenant", "name", "created", "last used", "expires"):
        table.add_column(col)
    for r in rows:
        expiry = f"{r['expires_at']:%Y-%m-%d %H:%M}" if r["expires_at"] else "never"
        table.add_row(r["tenant"], r["name"], f"{r['created_at']:%Y-%m-%d %H:%M}",
                      f"{r['last_used_at']:%Y-%m-%d %H:%M}" if r["last_used_at"] else "never",
                      f"expired {expiry}" if r["expired"] else expiry)
    out.print(table)


@token_app.command("revoke")
def token_revoke(
    name: Annotated[str, typer.Argument(help="The token's name.")],
    tenant: TenantOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Revoke a token: requests carrying it are refused from now on."""
    settings = resolve_settings(database_url)
    with control_plane(settings, quiet=True) as db, db.connect() as conn:
        tokens.revoke_token(conn, tenant or settings.tenant, name)
    out.print(f"token {name} revoked", highlight=False)
