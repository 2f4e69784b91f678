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
    DEFAULT_DIRECTORY, GOLD_SCHEMA, SILVER_SCHEMA, GoldFailure, GoldView, ViewFailed, dependency_order, load_gold,
)

__all__ = ["ANALYST", "DEFAULT_DIRECTORY", "GOLD_OWNER", "GoldFailure", "GoldListing", "GoldResult", "GoldSkip",
           "GoldView", "apply_gold", "list_gold", "load_gold"]

GOLD_OWNER = "ipai_gold"
"""Owns every gold view: reads silver and gold only (see the module docstring)."""
ANALYST = "analyst"
"""Reads gold and nothing else; Superset connects as this role."""


@dataclass(frozen=True)
class GoldSkip:
    """A view left alone because what it reads does not exist yet."""

    view: str
    reason: str

    def __str__(self) -> str:
        return f"gold.{self.view}: {self.reason}"


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


def apply_gold(conn: psycopg.Connection[Any], directory: Path = DEFAULT_DIRECTORY) -> GoldResult:
    """Create or replace every view of `directory` in schema gold; report, never raise, per view.

    `conn` must be in autocommit mode (`Database.connect()`): each view commits in its own transaction.
    Raises ConfigError only when the database lacks what every view needs (run `ipai db migrate`).
    """
    if not conn.autocommit:
        raise ValueError("apply_gold needs an autocommit connection: each view commits on its own")
    views, failed = load_gold(directory)
    _check_prerequisites(conn)
    warnings = _grant_silver(conn)
    ordered, cycles = dependency_order(views)
    failed += cycles
    applied: list[str] = []
    skipped: list[GoldSkip] = []
    for view in ordered:
        reason = _missing_input(conn, view, {s.view for s in skipped})
        if reason:
            skipped.append(GoldSkip(view.name, reason))
            continue
        try:
            with conn.transaction():
                _apply_view(conn, view, managed={v.name for v in views})
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


def _grant_silver(conn: psycopg.Connection[Any]) -> list[str]:
    """Let the views' owner read silver (tables created since the last apply included)."""
    if conn.execute("select to_regnamespace(%s)", (SILVER_SCHEMA,)).fetchone() == (None,):
        return [f"there is no schema {SILVER_SCHEMA} yet: views reading it are skipped"]
    try:
        with conn.transaction():
            conn.execute(sql.SQL("grant usage on schema {s} to {r}; grant select on all tables in schema {s} to {r}")
                         .format(s=sql.Identifier(SILVER_SCHEMA), r=sql.Identifier(GOLD_OWNER)))
    except psycopg.Error as exc:
        return [f"could not let {GOLD_OWNER} read schema {SILVER_SCHEMA} ({_message(exc)}); views reading tables "
                f"it cannot read will fail: apply as the owner of silver or a superuser"]
    return []


def _missing_input(conn: psycopg.Connection[Any], view: GoldView, skipped: set[str]) -> str | None:
    for schema, name in sorted(view.reads):
        if schema == GOLD_SCHEMA and name in skipped:
            return f"reads gold.{name}, which was skipped"
        if schema == SILVER_SCHEMA and conn.execute(
                "select to_regclass(%s)", (sql.Identifier(schema, name).as_string(conn),)).fetchone() == (None,):
            return (f"reads {schema}.{name}, which does not exist yet: sync its stream (bronze raw_{name}) "
                    "and build silver, then apply again")
    return None


def _apply_view(conn: psycopg.Connection[Any], view: GoldView, *, managed: set[str]) -> None:
    """Create or replace one view inside the caller's transaction; raise ViewFailed to roll it back."""
    target = sql.Identifier(GOLD_SCHEMA, view.name)
    conn.execute(sql.SQL("set local role {}").format(sql.Identifier(GOLD_OWNER)))
    try:
        with conn.transaction():
            _create(conn, view, replace=True)
    except errors.InvalidTableDefinition:  # columns renamed, retyped or removed: replace cannot do that
        _drop(conn, view, managed)
        _create(conn, view, replace=False)
    _check_columns(conn, view)
    conn.execute(sql.SQL("comment on view {} is {}").format(target, sql.Literal(view.doc.description)))
    for col in view.doc.columns:
        conn.execute(sql.SQL("comment on column {} is {}").format(
            sql.Identifier(GOLD_SCHEMA, view.name, col.name), sql.Literal(col.description)))
    try:  # as the owner: a view reading what the owner may not (the control plane) fails here, not for analysts
        conn.execute(sql.SQL("select * from {} limit 0").format(target))
    except psycopg.Error as exc:
        hint = (f"; the views' owner {GOLD_OWNER} reads only silver (granted by each apply where the applying "
                "role may grant it: apply as the owner of silver) and gold: a gold view reads nothing else"
                if isinstance(exc, errors.InsufficientPrivilege) else "")
        raise ViewFailed(GoldFailure(view.name, view.sql_path, _message(exc) + hint)) from None
    conn.execute(sql.SQL("grant select on {} to {}").format(target, sql.Identifier(ANALYST)))


def _create(conn: psycopg.Connection[Any], view: GoldView, *, replace: bool) -> None:
    """Run CREATE [OR REPLACE] VIEW; with `replace`, let InvalidTableDefinition through (changed columns)."""
    prefix = f"create {'or replace ' * replace}view {GOLD_SCHEMA}.{view.name} as\n"  # the name matched VIEW_NAME
    try:
        # binary=True sends it with the extended protocol, which refuses a second statement in the file.
        conn.execute(prefix + view.query, binary=True)
    except errors.InvalidTableDefinition as exc:
        if replace:
            raise
        raise ViewFailed(_located(view, prefix, exc)) from None
    except psycopg.Error as exc:
        failure = _located(view, prefix, exc)
        if "multiple commands" in failure.message:
            failure = GoldFailure(view.name, view.sql_path, "more than one statement: a gold view's SQL file holds "
                                                            "one SELECT (no CREATE VIEW, nothing after it)")
        raise ViewFailed(failure) from None


def _drop(conn: psycopg.Connection[Any], view: GoldView, managed: set[str]) -> None:
    """Drop the old version, with the gold views built on it when all are defined here (recreated later)."""
    dependents = {r[0] for r in conn.execute(
        "select distinct d.relname from pg_depend x join pg_rewrite w on w.oid = x.objid"
        " join pg_class d on d.oid = w.ev_class where x.refobjid = to_regclass(%s) and d.oid <> x.refobjid",
        (f"{GOLD_SCHEMA}.{view.name}",))}
    foreign = sorted(dependents - managed)
    if foreign:
        raise ViewFailed(GoldFailure(view.name, view.sql_path, "its columns changed and views not defined here "
                                     f"depend on it ({', '.join(foreign)}): drop them first"))
    conn.execute(sql.SQL("drop view if exists {} cascade").format(sql.Identifier(GOLD_SCHEMA, view.name)))


def _check_columns(conn: psycopg.Connection[Any], view: GoldView) -> None:
    actual = [r[0] for r in conn.execute(
        "select attname from pg_attribute where attrelid = to_regclass(%s) and attnum > 0 and not attisdropped"
        " order by attnum", (f"{GOLD_SCHEMA}.{view.name}",))]
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


def _located(view: GoldView, prefix: str, exc: psycopg.Error) -> GoldFailure:
    """Map Postgres' error position (a character of the statement sent) to a line of the SQL file."""
    position = exc.diag.statement_position
    line = column = None
    if position and position.isdigit():
        offset = max(0, int(position) - 1 - len(prefix))
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


def list_gold(conn: psycopg.Connection[Any], directory: Path = DEFAULT_DIRECTORY) -> list[GoldListing]:
    """The views defined in `directory` and those in schema gold, by name."""
    views, _ = load_gold(directory)
    present = {r[0]: (r[1] or "", r[2]) for r in conn.execute(
        "select c.relname, obj_description(c.oid, 'pg_class'),"
        " (select count(*) from pg_attribute a where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped)"
        " from pg_class c where c.relnamespace = to_regnamespace(%s) and c.relkind = 'v'", (GOLD_SCHEMA,))}
    out = [GoldListing(v.name, v.doc.description, len(v.doc.columns), True, v.name in present) for v in views]
    out += [GoldListing(n, d, int(k), False, True) for n, (d, k) in present.items() if n not in {v.name for v in views}]
    return sorted(out, key=lambda x: x.name)
