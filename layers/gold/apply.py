"""Gold: documented business views over silver, applied to Postgres (FR-015, US-003).

A view is a SELECT in `<folder>/gold_<domain>_<entity>.sql` and a YAML beside it documenting the view and
every column (layers/gold/definitions.py; `layers/gold/views/` ships the examples).

`apply_gold(conn, directory)` creates or replaces each view as `gold.<name>` in dependency order (a view
that reads `gold.<other>` comes after it), each in its own transaction, and writes its YAML as
`COMMENT ON VIEW` / `COMMENT ON COLUMN`. A view that does not compile, or whose YAML misses a column or
documents one the view does not have, is reported (file, line, Postgres' message) and rolled back: its
previous version stays as it was and the other views are still applied. A view reading a silver table
that does not exist yet is skipped, with the table named. Nothing is raised for one bad view; the
result lists what was applied, skipped and failed.

Rights. Views run with their owner's rights, which is intended: analysts read the curated gold columns,
never silver itself. The owner is `ipai_gold` (migration 20261201100000_gold_analyst.sql), a role that
may read silver and gold and nothing else, so a view cannot hand out anything beyond silver (a view
reading the control plane fails its check here, at apply time). The `analyst` role (how Superset
connects) may use schema `gold` and select its views: default privileges of `ipai_gold`, and a grant
made again by every apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors, sql

from engine.core.errors import ConfigError
from layers.gold.definitions import (
    DEFAULT_DIRECTORY, GOLD_SCHEMA, GoldFailure, GoldView, ViewFailed, dependency_order, load_gold,
)
from layers.gold.scope import GoldScope, Rewritten, Skip, rewrite

__all__ = ["ANALYST", "DEFAULT_DIRECTORY", "GOLD_OWNER", "GoldFailure", "GoldListing", "GoldResult", "GoldScope",
           "GoldSkip", "GoldView", "apply_gold", "list_gold", "load_gold"]

GOLD_OWNER = "ipai_gold"
"""Owns every gold view: reads silver and gold only (see the module docstring)."""
ANALYST = "analyst"
"""Reads the default tenant's gold and nothing else; Superset connects as this role (another tenant's analysts
connect as `analyst_<tenant>`: `GoldScope.analyst`)."""


@dataclass(frozen=True)
class GoldSkip:
    """A view left alone because what it reads does not exist yet."""

    view: str
    reason: str
    schema: str = GOLD_SCHEMA

    def __str__(self) -> str:
        return f"{self.schema}.{self.view}: {self.reason}"


@dataclass(frozen=True)
class GoldResult:
    """What one apply did: views applied (in order), skipped and failed; `warnings` for the whole run."""

    applied: tuple[str, ...] = ()
    skipped: tuple[GoldSkip, ...] = ()
    failed: tuple[GoldFailure, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failed


# -- applying ---------------------------------------------------------------------------------------------


def apply_gold(conn: psycopg.Connection[Any], directory: Path = DEFAULT_DIRECTORY,
               scope: GoldScope = GoldScope()) -> GoldResult:  # noqa: B008 - frozen: one shared default is fine
    """Create or replace every view of `directory` in the scope's gold schema; report, never raise, per view.

    `conn` must be in autocommit mode (`Database.connect()`): each view commits in its own transaction.
    Raises ConfigError only when the database lacks what every view needs (run `ipai db migrate`).
    """
    if not conn.autocommit:
        raise ValueError("apply_gold needs an autocommit connection: each view commits on its own")
    views, failed = load_gold(directory)
    _check_prerequisites(conn)
    warnings = _prepare_schema(conn, scope) + _grant_silver(conn, scope)
    ordered, cycles = dependency_order(views)
    failed += cycles
    applied: list[str] = []
    skipped: list[GoldSkip] = []
    for view in ordered:
        reason = _missing_input(conn, view, scope, {s.view for s in skipped})
        if reason:
            skipped.append(GoldSkip(view.name, reason, scope.gold_schema))
            continue
        try:
            with conn.transaction():
                _apply_view(conn, view, scope, managed={v.name for v in views})
        except Skip as exc:
            skipped.append(GoldSkip(view.name, str(exc), scope.gold_schema))
        except ViewFailed as exc:
            failed.append(exc.failure)
        except psycopg.Error as exc:  # commenting or granting failed: still this view's problem alone
            failed.append(GoldFailure(view.name, view.sql_path, _message(exc)))
        else:
            applied.append(view.name)
    return GoldResult(tuple(applied), tuple(skipped), tuple(failed), tuple(warnings))


def _check_prerequisites(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("select to_regnamespace(%s) is not null, exists (select from pg_roles where rolname = %s),"
                       " exists (select from pg_roles where rolname = %s)", (GOLD_SCHEMA, GOLD_OWNER, ANALYST)).fetchone()
    if row != (True, True, True):
        raise ConfigError(f"this database has no schema {GOLD_SCHEMA} or no roles {GOLD_OWNER} and {ANALYST}: "
                          "run `ipai db migrate` against it first")
    if conn.execute("select pg_has_role(%s, 'MEMBER')", (GOLD_OWNER,)).fetchone() != (True,):
        raise ConfigError(f"the role this connection uses may not act as {GOLD_OWNER}, which owns the gold views: "
                          "apply them as the role that ran the migrations, or have an admin run "
                          f"`grant {GOLD_OWNER} to <your role>`")


def _prepare_schema(conn: psycopg.Connection[Any], scope: GoldScope) -> list[str]:
    """Make the scope's gold schema (owned by the views' owner) and its tenant's analyst role where missing."""
    schema, analyst = sql.Identifier(scope.gold_schema), sql.Identifier(scope.analyst)
    warnings = []
    try:
        with conn.transaction():
            if conn.execute("select exists (select from pg_roles where rolname = %s)",
                            (scope.analyst,)).fetchone() == (False,):
                conn.execute(sql.SQL("create role {} login noinherit").format(analyst))
    except psycopg.Error as exc:
        warnings.append(f"could not create role {scope.analyst}, who reads the gold of tenant {scope.tenant} "
                        f"({_message(exc)}): an admin creates it with `create role {scope.analyst} login`")
    try:
        with conn.transaction():
            if conn.execute("select to_regnamespace(%s)", (scope.gold_schema,)).fetchone() == (None,):
                conn.execute(sql.SQL("create schema {} authorization {}").format(schema, sql.Identifier(GOLD_OWNER)))
                conn.execute(sql.SQL("revoke all on schema {} from public").format(schema))
            if conn.execute("select exists (select from pg_roles where rolname = %s)",
                            (scope.analyst,)).fetchone() == (True,):
                conn.execute(sql.SQL("grant usage on schema {} to {}").format(schema, analyst))
    except psycopg.Error as exc:
        raise ConfigError(f"cannot make schema {scope.gold_schema} for the gold views of {scope.label()}: "
                          f"{_message(exc)}; apply as the role that ran the migrations") from None
    return warnings


def _grant_silver(conn: psycopg.Connection[Any], scope: GoldScope) -> list[str]:
    """Let the views' owner read the scope's silver schemas (tables created since the last apply included)."""
    warnings = []
    for name in scope.silver_schemas:
        if conn.execute("select to_regnamespace(%s)", (name,)).fetchone() == (None,):
            continue
        try:
            with conn.transaction():
                conn.execute(sql.SQL("grant usage on schema {s} to {r}; grant select on all tables in schema {s}"
                                     " to {r}").format(s=sql.Identifier(name), r=sql.Identifier(GOLD_OWNER)))
        except psycopg.Error as exc:
            warnings.append(f"could not let {GOLD_OWNER} read schema {name} ({_message(exc)}); views reading "
                            "tables it cannot read will fail: apply as the owner of silver or a superuser")
    return warnings


def _missing_input(conn: psycopg.Connection[Any], view: GoldView, scope: GoldScope, skipped: set[str]) -> str | None:
    for schema, name in sorted(view.reads):
        if schema == GOLD_SCHEMA and name in skipped:
            return f"reads gold.{name}, which was skipped"
        if schema != GOLD_SCHEMA and view.doc.source_type is None and conn.execute(
                "select to_regclass(%s)", (sql.Identifier(scope.silver_schema, name).as_string(conn),)
        ).fetchone() == (None,):
            return (f"reads {scope.silver_schema}.{name}, which does not exist yet: sync its stream and build "
                    "silver, then apply again")
    return None


def _apply_view(conn: psycopg.Connection[Any], view: GoldView, scope: GoldScope, *, managed: set[str]) -> None:
    """Create or replace one view inside the caller's transaction; raise ViewFailed to roll it back, Skip to
    leave it alone."""
    target = sql.Identifier(scope.gold_schema, view.name)
    conn.execute(sql.SQL("set local role {}").format(sql.Identifier(GOLD_OWNER)))
    try:
        with conn.transaction():
            _create(conn, view, scope, replace=True)
    except errors.InvalidTableDefinition:  # columns renamed, retyped or removed: replace cannot do that
        _drop(conn, view, scope, managed)
        _create(conn, view, scope, replace=False)
    _check_columns(conn, view, scope)
    conn.execute(sql.SQL("comment on view {} is {}").format(target, sql.Literal(view.doc.description)))
    for col in view.doc.columns:
        conn.execute(sql.SQL("comment on column {} is {}").format(
            sql.Identifier(scope.gold_schema, view.name, col.name), sql.Literal(col.description)))
    try:  # as the owner: a view reading what the owner may not (the control plane) fails here, not for analysts
        conn.execute(sql.SQL("select * from {} limit 0").format(target))
    except psycopg.Error as exc:
        hint = (f"; the views' owner {GOLD_OWNER} reads only silver (granted by each apply where the applying "
                "role may grant it: apply as the owner of silver) and gold: a gold view reads nothing else"
                if isinstance(exc, errors.InsufficientPrivilege) else "")
        raise ViewFailed(GoldFailure(view.name, view.sql_path, _message(exc) + hint)) from None
    if conn.execute("select exists (select from pg_roles where rolname = %s)", (scope.analyst,)).fetchone() == (True,):
        conn.execute(sql.SQL("grant select on {} to {}").format(target, sql.Identifier(scope.analyst)))


def _create(conn: psycopg.Connection[Any], view: GoldView, scope: GoldScope, *, replace: bool) -> None:
    """Run CREATE [OR REPLACE] VIEW; with `replace`, let InvalidTableDefinition through (changed columns)."""
    target = sql.Identifier(scope.gold_schema, view.name).as_string(conn)
    statement = rewrite(conn, view, scope, f"create {'or replace ' * replace}view {target} as\n")
    try:
        # binary=True sends it with the extended protocol, which refuses a second statement in the file.
        conn.execute(statement.statement, binary=True)
    except errors.InvalidTableDefinition as exc:
        if replace:
            raise
        raise ViewFailed(_located(view, statement, exc)) from None
    except psycopg.Error as exc:
        failure = _located(view, statement, exc)
        if "multiple commands" in failure.message:
            failure = GoldFailure(view.name, view.sql_path, "more than one statement: a gold view's SQL file holds "
                                                            "one SELECT (no CREATE VIEW, nothing after it)")
        raise ViewFailed(failure) from None


def _drop(conn: psycopg.Connection[Any], view: GoldView, scope: GoldScope, managed: set[str]) -> None:
    """Drop the old version, with the gold views built on it when all are defined here (recreated later)."""
    dependents = {r[0] for r in conn.execute(
        "select distinct d.relname from pg_depend x join pg_rewrite w on w.oid = x.objid"
        " join pg_class d on d.oid = w.ev_class where x.refobjid = to_regclass(%s) and d.oid <> x.refobjid",
        (sql.Identifier(scope.gold_schema, view.name).as_string(conn),))}
    foreign = sorted(dependents - managed)
    if foreign:
        raise ViewFailed(GoldFailure(view.name, view.sql_path, "its columns changed and views not defined here "
                                     f"depend on it ({', '.join(foreign)}): drop them first"))
    conn.execute(sql.SQL("drop view if exists {} cascade").format(sql.Identifier(scope.gold_schema, view.name)))


def _check_columns(conn: psycopg.Connection[Any], view: GoldView, scope: GoldScope) -> None:
    actual = [r[0] for r in conn.execute(
        "select attname from pg_attribute where attrelid = to_regclass(%s) and attnum > 0 and not attisdropped"
        " order by attnum", (sql.Identifier(scope.gold_schema, view.name).as_string(conn),))]
    documented = [c.name for c in view.doc.columns]
    missing = [c for c in actual if c not in documented]
    if missing:
        raise ViewFailed(GoldFailure(
            view.name, view.yaml_path, f"does not document column{'s' * (len(missing) > 1)} {', '.join(missing)} "
            "of the view: add each under `columns:` with a description"))
    extra = [c for c in documented if c not in actual]
    if extra:
        raise ViewFailed(GoldFailure(
            view.name, view.yaml_path, f"documents column {extra[0]!r}, which the view does not have (its "
            f"columns: {', '.join(actual)})", view.column_lines[extra[0]]))


def _located(view: GoldView, statement: Rewritten, exc: psycopg.Error) -> GoldFailure:
    """Map Postgres' error position (a character of the statement sent) to a line of the SQL file."""
    position = exc.diag.statement_position
    line = column = None
    offset = statement.original(int(position) - 1) if position and position.isdigit() else None
    if offset is not None:
        before = view.query[:offset]
        line, column = before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1
    return GoldFailure(view.name, view.sql_path, _message(exc), line, column)


def _message(exc: psycopg.Error) -> str:
    diag = exc.diag
    text = diag.message_primary or str(exc).strip().splitlines()[0]
    return text + "".join(f" ({label}: {v})" for label, v in (("detail", diag.message_detail),
                                                               ("hint", diag.message_hint)) if v)


# -- listing ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GoldListing:
    """A view defined on disk or present in the database, and whether it is in both."""

    name: str
    description: str
    columns: int
    defined: bool
    in_database: bool


def list_gold(conn: psycopg.Connection[Any], directory: Path = DEFAULT_DIRECTORY,
              scope: GoldScope = GoldScope()) -> list[GoldListing]:  # noqa: B008 - frozen default
    """The views defined in `directory` and those in the scope's gold schema, by name."""
    views, _ = load_gold(directory)
    present = {r[0]: (r[1] or "", r[2]) for r in conn.execute(
        "select c.relname, obj_description(c.oid, 'pg_class'),"
        " (select count(*) from pg_attribute a where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped)"
        " from pg_class c where c.relnamespace = to_regnamespace(%s) and c.relkind = 'v'", (scope.gold_schema,))}
    out = [GoldListing(v.name, v.doc.description, len(v.doc.columns), True, v.name in present) for v in views]
    out += [GoldListing(n, d, int(k), False, True) for n, (d, k) in present.items() if n not in {v.name for v in views}]
    return sorted(out, key=lambda x: x.name)
