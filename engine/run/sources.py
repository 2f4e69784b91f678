"""What a run lets its sources reach, read once on the driver and handed to every plan and read task (the options
`egress` and `control_plane`; a read task in a Ray worker applies the driver's policy, not its own environment's).

    egress          engine/core/egress.py's policy from the environment; a control plane on this machine (the
                    embedded PostgreSQL, or a database URL on loopback or a Unix socket) counts as dev mode while
                    IPAI_EGRESS_ALLOW is unset, and the IPAI home folder is a default SQLite root
    control_plane   the control-plane database's identity (server, database, tenants), which database sources
                    refuse to read as the platform (connectors/database/guard.py), and the operator's
                    IPAI_SOURCES_IN_CONTROL_PLANE
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import psycopg

from engine.controlplane.db import Database
from engine.controlplane.settings import Settings
from engine.core.egress import CONTROL_PLANE_ENV, ControlPlane, EgressPolicy
from engine.core.urls import beyond_this_machine


def source_options(settings: Settings, db: Database, *, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The options a run adds to every PlanContext and ReadContext: `egress` and `control_plane`."""
    env = os.environ if environ is None else environ
    return {"egress": egress_policy(settings, env), "control_plane": control_plane(db, env)}


def egress_policy(settings: Settings, environ: Mapping[str, str]) -> EgressPolicy:
    """The egress policy of runs under these settings (see the module docstring for dev mode)."""
    return EgressPolicy.from_environment(environ, local=on_this_machine(settings.database_url), home=settings.home)


def on_this_machine(database_url: str | None) -> bool:
    """Whether the control plane runs here: embedded (no URL), or a URL on loopback or a Unix socket."""
    if not database_url:
        return True
    try:
        return not beyond_this_machine(database_url)
    except psycopg.ProgrammingError:
        return False


def control_plane(db: Database, environ: Mapping[str, str]) -> ControlPlane:
    """Who the control-plane database is, as the run's own connection sees it."""
    with db.connect() as conn:
        row = conn.execute("select pg_postmaster_start_time()::text, current_database(),"
                           " has_function_privilege('pg_catalog.pg_control_system()', 'execute')").fetchone()
        assert row is not None
        started, database, may_read = row
        sysid = conn.execute("select system_identifier::text from pg_control_system()").fetchone() if may_read else None
        return ControlPlane(system_identifier=sysid[0] if sysid else None, started_at=started, database=database,
                            tenants=_tenants(conn),
                            sources_allowed=environ.get(CONTROL_PLANE_ENV, "").strip().lower() == "allow")


def _tenants(conn: psycopg.Connection[Any]) -> int:
    """How many tenants the deployment has. Workers may not read the tenant table: they count the tenants that
    have defined a connector (every tenant's definitions are theirs to read), and the built-in one."""
    try:
        row = conn.execute("select count(*) from ipai_tenants").fetchone()
    except psycopg.errors.InsufficientPrivilege:
        row = conn.execute("select greatest(count(distinct tenant_id), 1) from connector_definitions").fetchone()
    return int(row[0]) if row else 1
