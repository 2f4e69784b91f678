"""`ipai tenant` (admin): create tenants and add Supabase users to them (engine/controlplane/tenants.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from engine.cli.common import DatabaseOpt, control_plane, out, resolve_settings
from engine.controlplane.tenants import add_member, create_tenant

tenant_app = typer.Typer(help="Tenants (admin): who owns connectors, runs and secrets.", no_args_is_help=True)


@tenant_app.command("create")
def tenant_create(
    name: Annotated[str, typer.Argument(help="Tenant name: lower case letters, digits and _.")],
    database_url: DatabaseOpt = None,
) -> None:
    """Create a tenant (an admin command: needs the database owner's connection)."""
    with control_plane(resolve_settings(database_url), quiet=True) as db, db.connect() as conn:
        tenant_id = create_tenant(conn, name)
    out.print(f"tenant {name}: {tenant_id}", highlight=False)


@tenant_app.command("add-user")
def tenant_add_user(
    name: Annotated[str, typer.Argument(help="Tenant name or id.")],
    user_id: Annotated[str, typer.Argument(help="The user's Supabase auth id (the JWT's sub).")],
    owner: Annotated[bool, typer.Option("--owner", help="Make the user an owner of the tenant.")] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Let a Supabase user see and run the tenant's connectors."""
    with control_plane(resolve_settings(database_url), quiet=True) as db, db.connect() as conn:
        add_member(conn, name, user_id, owner=owner)
    out.print(f"user {user_id} added to tenant {name}", highlight=False)
