"""What every `ipai` command group shares: the consoles, the common options, settings, the control plane,
and the one place an error becomes a message and an exit code.

Exit codes: 1 for a failed run or an unreachable service, 2 for bad input (spec, arguments), 75 for a run
deferred (try again later), 130 for a run cancelled with Ctrl-C.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import psycopg
import typer
from rich.console import Console
from rich.markup import escape

from engine.controlplane.db import Database, migrate, open_database
from engine.controlplane.settings import Settings
from engine.controlplane.tenants import find_tenant
from engine.core.errors import ConfigError, IpaiError, RunDeferred, SpecError
from engine.core.spec import ConnectorSpec, redact_url

# Piped output is read by scripts and agents: do not cut table cells to a pretend 80-column terminal.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

DatabaseOpt = Annotated[str | None, typer.Option("--database-url", help="Control-plane Postgres URL "
                        "(default: IPAI_DATABASE_URL, else the embedded PostgreSQL).", show_default=False)]
InstanceArg = Annotated[str, typer.Argument(metavar="INSTANCE", help="Instance name or id.")]
EnvOpt = Annotated[str | None, typer.Option(help="Environment, when the name exists in several.")]
YesOpt = Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")]
StreamOpt = Annotated[str | None, typer.Option(help="Only this stream.")]
LakehouseOpt = Annotated[str | None, typer.Option("--lakehouse", help="Lakehouse folder or s3:// URI "
                         "(default: IPAI_LAKEHOUSE_URI, else <IPAI_HOME>/lakehouse).", show_default=False)]


def resolve_settings(database_url: str | None = None, lakehouse: str | None = None,
                     address: str | None = None) -> Settings:
    """The settings from the command's options, else the environment, else the defaults."""
    return Settings.resolve(database_url=database_url, lakehouse_uri=lakehouse, ray_address=address)


@contextmanager
def control_plane(settings: Settings, *, quiet: bool = False, create_key: bool = False) -> Iterator[Database]:
    """The control plane, migrated, acting for the settings' tenant and carrying the Vault key if any."""
    from engine.controlplane.vault import is_compat_vault, vault_session

    db = open_database(settings)
    if db.embedded_pgdata and not quiet:
        err.print(f"[dim]control plane: embedded PostgreSQL in {db.embedded_pgdata}[/dim]", highlight=False)
    with db.connect() as conn:
        migrate(conn)
        session = vault_session(settings.home, create=create_key and is_compat_vault(conn))
        if settings.tenant != "local":
            tenant_id = find_tenant(conn, settings.tenant)
            if tenant_id is None:
                raise ConfigError(f"no tenant {settings.tenant!r} (IPAI_TENANT); create it with "
                                  f"`ipai tenant create {settings.tenant}` or unset IPAI_TENANT for the local one")
            session["ipai.tenant_id"] = tenant_id
    yield db.with_session(session)


def load_spec_file(path: Path) -> tuple[ConnectorSpec, str]:
    """The spec in the file, validated, and its text as written (what the run records)."""
    from connectors.specload import load_spec

    spec = load_spec(path)
    return spec, path.read_text(encoding="utf-8")


@contextmanager
def errors_reported() -> Iterator[None]:
    """Turn an engine or database error into one message on stderr and its exit code, never a traceback."""
    try:
        yield
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
