"""`ipai secret`: secrets in the Vault that specs reference as {secret: NAME}; values are never printed."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from engine.cli.common import DatabaseOpt, control_plane, out, resolve_settings
from engine.core.errors import ConfigError

secret_app = typer.Typer(help="Secrets in the Vault that specs reference as {secret: NAME}.", no_args_is_help=True)


@secret_app.command("set")
def secret_set(
    name: Annotated[str, typer.Argument(help="Secret name, as specs reference it ({secret: NAME}).")],
    database_url: DatabaseOpt = None,
) -> None:
    """Store a secret in the Vault, read from stdin (never from the command line, where shells and `ps` keep it)."""
    from engine.controlplane.vault import store_secret
    from engine.core.secrets import check_secret_value

    if sys.stdin.isatty():
        import getpass

        value = getpass.getpass(f"value of {name} (not echoed): ")
    else:
        value = sys.stdin.read()
    value = value.rstrip("\r\n")
    if not value:
        raise ConfigError(f"no value for secret {name!r} on stdin; pipe it in: `ipai secret set {name} < file`")
    check_secret_value(name, value)  # before any connection: a short value is refused as it is
    with control_plane(resolve_settings(database_url), quiet=True, create_key=True) as db, db.connect() as conn:
        created = store_secret(conn, name, value)
    out.print(f"secret {name} {'stored' if created else 'replaced'} in the Vault", highlight=False)


@secret_app.command("list")
def secret_list(database_url: DatabaseOpt = None) -> None:
    """List the names of stored secrets (never their values)."""
    from engine.controlplane.vault import list_secrets

    with control_plane(resolve_settings(database_url), quiet=True) as db, db.connect() as conn:
        for item in list_secrets(conn):
            out.print(f"{item['name']}  (updated {str(item['updated_at'])[:19]})", highlight=False)
