"""What keeps a database source out of the control plane: the access a run grants (`SourceAccess`), and the check
a PostgreSQL connection passes after connecting and before anything is read (`check_source`).

Before connecting, each dialect checks the host (or SQLite path) against the egress policy
(engine/core/egress.py) and connects to the checked addresses. After connecting, `check_source` asks the server
who it is: its system identifier and database name, compared with the control plane's, so no host alias, address
form or socket path gets around it. On the control-plane database it refuses

    superusers, roles that bypass row-level security, the owner of the control plane's tables, the platform's
    roles (ipai_*, service_role, authenticator, anon, authenticated, analyst, supabase_*) and built-in roles that
    read everything (pg_read_all_data ...), and any member of one of them (it could SET ROLE);
    a role that can read a table of the control plane (schemas ipai, vault, auth, cron, every layer schema
    and the public ipai_* / connector_* tables);
    and, in a deployment with more than one tenant, any role, unless the operator sets
    IPAI_SOURCES_IN_CONTROL_PLANE=allow.

A dedicated role that can read only app tables (a Supabase project whose app tables live beside the control
plane) passes. On another database of the control plane's server a superuser reads the control plane's files,
so a multi-tenant deployment refuses one there too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.core.egress import CONTROL_PLANE_ENV, ControlPlane, EgressPolicy
from engine.core.errors import ConfigError


@dataclass(frozen=True)
class SourceAccess:
    """Where a source may connect and which database it must not read as the platform: values the run hands to
    plans (`PlanContext.options`) and read tasks (`ReadContext.options`) under `egress` and `control_plane`."""

    egress: EgressPolicy
    control_plane: ControlPlane | None = None
    """None outside a run (a stream planned on its own): the identity check is skipped, egress still applies."""

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> SourceAccess:
        egress = options.get("egress")
        return cls(egress if isinstance(egress, EgressPolicy) else EgressPolicy.from_environment(),
                   options.get("control_plane"))


PLATFORM_ROLES = ("service_role", "authenticator", "anon", "authenticated", "analyst", "pg_read_all_data",
                  "pg_write_all_data", "pg_read_server_files", "pg_execute_server_program")
FILE_ROLES = ("pg_read_server_files", "pg_execute_server_program")
CONTROL_SCHEMAS = r"^(ipai|vault|auth|cron)(_|$)|(^|_)(bronze|silver|gold)(_|$)"
"""The control plane's schemas, and every tenant's and env's layers (bronze_dev, acme_silver: layers/addressing.py)."""
CONTROL_TABLES = r"^(ipai_|connector_|pipeline_runs$|webhook_deliveries$)"

_SERVER = ("select pg_postmaster_start_time()::text, current_database(), current_user::text,"
           " has_function_privilege('pg_catalog.pg_control_system()', 'execute')")
_SYSID = "select system_identifier::text from pg_control_system()"
_ROLES, _FILE_ROLES = (", ".join(f"'{r}'" for r in roles) for roles in (PLATFORM_ROLES, FILE_ROLES))
_PLATFORM = (
    "select r.rolname::text, case when r.rolsuper then 'a superuser' when r.rolbypassrls then"
    " 'a role that bypasses row-level security' when r.oid = c.relowner then 'the owner of the control plane''s"
    " tables' else 'a role of the platform' end from pg_roles r left join pg_class c on c.oid ="
    " to_regclass('public.ipai_tenants') where pg_has_role(current_user, r.oid, 'MEMBER') and (r.rolsuper or"
    f" r.rolbypassrls or r.oid = c.relowner or r.rolname ~ '^(ipai_|supabase_)' or r.rolname in ({_ROLES}))"
    " order by r.rolname <> current_user, r.rolname limit 1")
_READABLE = (
    "select n.nspname || '.' || c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
    f" where c.relkind in ('r', 'p', 'v', 'm', 'f') and (n.nspname ~ '{CONTROL_SCHEMAS}' or (n.nspname = 'public'"
    f" and c.relname ~ '{CONTROL_TABLES}')) and has_schema_privilege(n.oid, 'usage')"
    " and has_table_privilege(c.oid, 'select') order by 1 limit 1")
_FILES = (
    "select r.rolname::text from pg_roles r where pg_has_role(current_user, r.oid, 'MEMBER') and (r.rolsuper"
    f" or r.rolname in ({_FILE_ROLES})) order by r.rolname <> current_user limit 1")


def check_source(conn: Any, control_plane: ControlPlane | None, *, where: str) -> None:
    """Refuse, before anything is read, a connection (DB-API: ADBC or psycopg) that reached the control-plane
    database as a role that could read it (see the module docstring); `where` names the source in messages."""
    if control_plane is None:
        return
    started, database, user, may_read_identifier = _row(conn, _SERVER)
    system_identifier = _row(conn, _SYSID)[0] if may_read_identifier else None
    if not control_plane.same_server(system_identifier, started):
        return
    many = control_plane.tenants > 1
    if database != control_plane.database:
        role = _row(conn, _FILES) if many else None
        if role:
            what = "a superuser or a file-reading role"
            raise ConfigError(f"{where}: database {database} is on the control plane's server, and "
                              f"{_who(user, role[0], what)}: it can read the server's files, so every tenant's data. "
                              "Connect as a role that is neither")
        return
    here = f"{where}: database {database} is the control-plane database"
    platform = _row(conn, _PLATFORM)
    if platform:
        raise ConfigError(f"{here}, and {_who(user, platform[0], platform[1])}: it could read every tenant's "
                          "definitions, runs and logs. Connect as a dedicated role that can read only your app "
                          "tables (CREATE ROLE ... LOGIN; GRANT SELECT ON those tables)")
    readable = _row(conn, _READABLE)
    if readable:
        raise ConfigError(f"{here}, and role {user} can read the control plane's {readable[0]}; a source role there "
                          "may read only app tables (REVOKE its access to the platform's schemas and tables)")
    if many and not control_plane.sources_allowed:
        raise ConfigError(f"{here} of a deployment with {control_plane.tenants} tenants; reading app tables there "
                          f"needs the operator's leave: {CONTROL_PLANE_ENV}=allow in the environment that runs syncs "
                          "(`ipai worker`, or the CLI)")


def _who(user: str, role: str, what: str) -> str:
    return f"role {user} is {what}" if role == user else f"role {user} is a member of {role}, {what}"


def _row(conn: Any, sql: str) -> tuple[Any, ...]:
    cur = conn.cursor()
    try:
        cur.execute(sql)
        row = cur.fetchone()
    finally:
        cur.close()
    return tuple(row) if row is not None else ()
