"""Which silver tables one tenant and env's gold views read, and the SQL that reads them.

Gold is applied per tenant and env (`GoldScope`), into that scope's gold schema (`gold`, `gold_dev`,
`acme_gold` ...: layers/addressing.py). In a view's SQL, `silver` and `gold` name the scope's schemas:

- A view whose YAML names a `source_type` reads streams: `silver.orders` is the `orders` stream of every
  instance of that source type in the scope, one relation with an `instance` column (the instance's name)
  followed by the union of the instances' columns (a column an instance lacks is null there; a column
  typed differently by two instances is text in all). So a view works whatever the instances are called,
  and a new instance appears in it after its first silver merge. Joins between streams match `instance`.
- A view without `source_type` reads the scope's silver tables by name (`silver.shop_orders`).

`rewrite` produces the statement: the stream relations become common table expressions put in front of
the query (inside its own WITH, when it has one), the schema names are replaced, and `Rewritten.original`
maps a position in the statement back to the view's file, for error messages.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from layers.addressing import DEFAULT_TENANT, PLAIN_ENV, fit_identifier, schema_name
from layers.gold.definitions import GOLD_SCHEMA, SILVER_SCHEMA, GoldView, blank_comments_and_strings, reference_spans

INSTANCE_COLUMN = "instance"


@dataclass(frozen=True)
class SilverTable:
    """One instance's silver table of one stream."""

    instance: str
    source_type: str
    stream: str
    schema: str
    table: str


@dataclass(frozen=True)
class GoldScope:
    """One tenant and env: where its gold views go and the silver tables they may read."""

    tenant: str = DEFAULT_TENANT
    env: str = PLAIN_ENV
    silver: tuple[SilverTable, ...] = ()

    @property
    def gold_schema(self) -> str:
        return schema_name(GOLD_SCHEMA, tenant=self.tenant, env=self.env)

    @property
    def silver_schema(self) -> str:
        return schema_name(SILVER_SCHEMA, tenant=self.tenant, env=self.env)

    @property
    def analyst(self) -> str:
        """The role that reads this tenant's gold: `analyst` for the default tenant, else `analyst_<tenant>`."""
        return "analyst" if self.tenant == DEFAULT_TENANT else fit_identifier(f"analyst_{self.tenant}")

    @property
    def silver_schemas(self) -> list[str]:
        """Every schema the scope's views may read silver from."""
        return sorted({self.silver_schema, *(t.schema for t in self.silver)})

    def label(self) -> str:
        return f"tenant {self.tenant}, env {self.env}"

    def tables(self, source_type: str, stream: str) -> list[SilverTable]:
        return sorted((t for t in self.silver if t.source_type == source_type and t.stream == stream),
                      key=lambda t: t.instance)


@dataclass(frozen=True)
class Rewritten:
    """A view's statement for one scope, and how its positions map back to the view's file."""

    statement: str
    splices: tuple[tuple[int, int, int], ...] = field(default=())
    """(statement offset, original offset, length) of each stretch of the statement copied from the file."""

    def original(self, position: int) -> int | None:
        """The 0-based offset in the view's query of the statement's 0-based `position` (None: generated)."""
        for at, orig, length in self.splices:
            if at <= position < at + length:
                return orig + position - at
        return None


class Skip(Exception):
    """The view cannot be made in this scope yet (what it reads does not exist); the message says why."""


def rewrite(conn: psycopg.Connection[Any], view: GoldView, scope: GoldScope, prefix: str) -> Rewritten:
    """The CREATE VIEW statement (`prefix` + the view's query) for `scope`; raise Skip when a stream has no
    silver table in the scope yet."""
    query = view.query
    ctes: list[str] = []
    replaced: list[tuple[int, int, str]] = []
    for schema, name, start, end in reference_spans(query):
        if schema == GOLD_SCHEMA:
            replaced.append((start, end, sql.Identifier(scope.gold_schema, name).as_string(conn)))
        elif view.doc.source_type is None:
            replaced.append((start, end, sql.Identifier(scope.silver_schema, name).as_string(conn)))
        else:
            cte = f"_silver_{name}"
            if not any(c.startswith(f'"{cte}" as') for c in ctes):
                ctes.append(f'"{cte}" as (\n{_union(conn, view.doc.source_type, name, scope)}\n)')
            replaced.append((start, end, f'"{cte}"'))
    head, body_start = prefix, 0
    if ctes:
        lead = re.match(r"\s*with(\s+recursive)?\s", blank_comments_and_strings(query), re.IGNORECASE)
        if lead:  # inside the query's own WITH: `with [recursive] <ours>, <its own>`
            head += query[:lead.end()] + ",\n".join(ctes) + ",\n"
            body_start = lead.end()
        else:
            head += "with " + ",\n".join(ctes) + "\n"
    parts, splices, at, pos = [head], [], len(head), body_start
    for start, end, text in sorted(replaced):
        if start < body_start:
            continue
        parts += [query[pos:start], text]
        splices.append((at, pos, start - pos))
        at += (start - pos) + len(text)
        pos = end
    parts.append(query[pos:])
    splices.append((at, pos, len(query) - pos))
    return Rewritten("".join(parts), tuple(splices))


def _union(conn: psycopg.Connection[Any], source_type: str, stream: str, scope: GoldScope) -> str:
    """SELECT ... UNION ALL ... over the stream's silver tables in the scope that exist."""
    tables = [(t, _columns(conn, t)) for t in scope.tables(source_type, stream)]
    tables = [(t, cols) for t, cols in tables if cols]
    if not tables:
        raise Skip(f"reads silver.{stream}, the {stream} stream of {source_type} instances, and no {source_type} "
                   f"instance of {scope.label()} has merged it into silver yet: sync one with layers "
                   "[bronze, silver], then apply again")
    types: dict[str, set[str]] = {}
    for _, cols in tables:
        for name, typ in cols:
            types.setdefault(name, set()).add(typ)
    names = [n for n in types if n != INSTANCE_COLUMN]
    selects = []
    for t, cols in tables:
        mine = dict(cols)
        items = [f"{sql.Literal(t.instance).as_string(conn)}::text as {INSTANCE_COLUMN}"]
        for n in names:
            ident = sql.Identifier(n).as_string(conn)
            typ = next(iter(types[n])) if len(types[n]) == 1 else "text"
            if n not in mine:
                items.append(f"null::{typ} as {ident}")
            elif len(types[n]) > 1:
                items.append(f"{ident}::text as {ident}")
            else:
                items.append(ident)
        selects.append(f"    select {', '.join(items)} from {sql.Identifier(t.schema, t.table).as_string(conn)}")
    return "\n    union all\n".join(selects)


def _columns(conn: psycopg.Connection[Any], t: SilverTable) -> Sequence[tuple[str, str]]:
    return [(r[0], r[1]) for r in conn.execute(
        "select attname, format_type(atttypid, atttypmod) from pg_attribute where attrelid = to_regclass(%s)"
        " and attnum > 0 and not attisdropped order by attnum",
        (sql.Identifier(t.schema, t.table).as_string(conn),))]
