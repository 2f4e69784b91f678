"""An Odoo 17/18-shaped PostgreSQL schema with realistic, deterministic data, and helpers that change it.

What it models, per ../shared/api-contracts/odoo.md section 9: one Odoo database's accounting, sales and
catalogue tables as the ORM lays them out. The model metadata (`MODELS`, `TABLES`) lives in odoo_models.py,
the fixed reference rows and the time frame (`START`, `END`, `IMPORT`, `RECOMPUTE`) in odoo_reference.py and
the seeded generator in odoo_data.py; this module creates the tables from them and changes rows as tests need.
Details the contract leaves open come from Odoo 17 source knowledge and are marked "unconfirmed": the
`_order` of models other than sale.order and account.move, French account codes, the branch posting in its
parent's journals, the `product.template.type` values (17's consu/service/product), draft moves named "/".

    with psycopg.connect(url) as conn:
        counts = create(conn, "odoo", moves=30_000)   # about 100k journal items: ~7 s of CPU, COPY
        touch(conn, "res_partner", [12, 13])          # write_date := now (UTC), customer_rank + 1
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

import psycopg
from psycopg import sql

from tests.emulators.odoo.data import Generator
from tests.emulators.odoo.models import MODELS, TABLES, Field, Model
from tests.emulators.odoo.reference import END, FIRST, IMPORT, LAST, RECOMPUTE, START, ascii_fold

__all__ = ["END", "IMPORT", "MODELS", "RECOMPUTE", "START", "TABLES", "Field", "Model", "archive", "create",
           "delete", "insert_partners", "set_write_date", "touch"]


# -- DDL and loading -------------------------------------------------------------------------------------

def _table(schema: str, table: str) -> sql.Identifier:
    return sql.Identifier(schema, table)


def _ddl(schema: str, model: Model) -> sql.Composed:
    columns: list[sql.Composable] = [sql.SQL("id serial primary key")]
    for name, f in model.fields.items():
        if f.stored:
            columns.append(sql.SQL("{} {}{}").format(sql.Identifier(name), sql.SQL(f.column_type()),
                                                     sql.SQL(" not null" if f.required else "")))
    return sql.SQL("create table {} ({})").format(_table(schema, model.table), sql.SQL(", ").join(columns))


def _constraints(schema: str, model: Model) -> list[sql.Composed]:
    table = _table(schema, model.table)
    out = [sql.SQL("create index {} on {} (write_date)").format(sql.Identifier(f"{model.table}__write_date_index"),
                                                                 table)]
    for name, f in model.fields.items():
        if f.type == "many2one":
            assert f.relation is not None
            out.append(sql.SQL("alter table {} add foreign key ({}) references {} (id) on delete {}").format(
                table, sql.Identifier(name), _table(schema, MODELS[f.relation].table), sql.SQL(f.ondelete or "")))
    for index_table, column in (("account_move_line", "move_id"), ("product_product", "product_tmpl_id"),
                                ("res_partner", "parent_id")):
        if model.table == index_table:
            out.append(sql.SQL("create index on {} ({})").format(table, sql.Identifier(column)))
    return out


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value: Any) -> str:
    """One value in COPY's text format (psycopg's write_row is three times slower at 100k rows)."""
    if value is None:
        return "\\N"
    if value is True or value is False:
        return "t" if value else "f"
    if isinstance(value, str):
        return value.translate(_COPY_ESCAPES)
    return str(value)


def _copy(conn: psycopg.Connection, schema: str, model: Model, rows: Iterable[Mapping[str, Any]]) -> int:
    columns = ["id", *model.columns()]
    statement = sql.SQL("copy {} ({}) from stdin").format(_table(schema, model.table),
                                                          sql.SQL(", ").join(map(sql.Identifier, columns)))
    n = 0
    with conn.cursor() as cur, cur.copy(statement) as copy:
        chunk: list[str] = []
        for row in rows:
            chunk.append("\t".join([_copy_text(row.get(c)) for c in columns]))
            n += 1
            if len(chunk) == 5000:
                copy.write("\n".join(chunk) + "\n")
                chunk = []
        if chunk:
            copy.write("\n".join(chunk) + "\n")
    conn.execute(sql.SQL("select setval(pg_get_serial_sequence({}, 'id'), coalesce(max(id), 0) + 1, false) "
                         "from {}").format(sql.Literal(f'"{schema}"."{model.table}"'),
                                           _table(schema, model.table)))
    return n


def create(conn: psycopg.Connection, schema: str = "public", *, partners: int = 200, moves: int = 500,
           orders: int = 300, products: int = 50, seed: int = 0) -> dict[str, int]:
    """Drop and recreate the Odoo tables in `schema` (created if missing) and fill them; commit.

    `partners` counts generated customers and vendors (contacts included) beyond the 9 Odoo itself makes,
    `moves` journal entries (about 3.3 journal items each), `orders` sale orders, `products` templates.
    The same arguments always give the same rows. Returns the row count of every table.
    """
    gen = Generator(seed)
    gen.fixed_partners()
    generated = gen.partners(partners, first_id=10)
    gen.stamp_partners(generated)
    gen.rows["res_partner"] += generated
    gen.products(products)
    gen.moves(moves)
    gen.orders(orders)
    conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(schema)))
    for model in MODELS.values():
        conn.execute(sql.SQL("drop table if exists {} cascade").format(_table(schema, model.table)))
    for model in MODELS.values():
        conn.execute(_ddl(schema, model))
    counts = {model.table: _copy(conn, schema, model, gen.rows.get(model.table, ())) for model in MODELS.values()}
    for model in MODELS.values():
        for statement in _constraints(schema, model):
            conn.execute(statement)
        conn.execute(sql.SQL("analyze {}").format(_table(schema, model.table)))
    conn.commit()
    return counts


# -- changes for tests ----------------------------------------------------------------------------------

_NOW = sql.SQL("date_trunc('second', now() at time zone 'utc')")
_TOUCHED = MappingProxyType({  # a realistic write per table; other tables only bump write_date
    "res_partner": "customer_rank = customer_rank + 1",
    "product_template": "list_price = list_price + 1",
    "account_move": "ref = coalesce(ref, '') || '*'",
    "sale_order": "invoice_status = case when state = 'sale' then 'invoiced' else invoice_status end",
})


def _model_of(table: str) -> Model:
    model = TABLES.get(table) or MODELS.get(table)
    if model is None:
        raise ValueError(f"unknown table {table!r}; known: {sorted(TABLES)}")
    return model


def _at(at: datetime | None) -> sql.Composable:
    return _NOW if at is None else sql.Literal(_naive_utc(at))


def _naive_utc(at: datetime) -> datetime:
    if at.tzinfo is None:
        return at
    offset = at.utcoffset() or timedelta(0)
    return (at - offset).replace(tzinfo=None)


def _finish(conn: psycopg.Connection) -> None:
    if not conn.autocommit:
        conn.commit()


def touch(conn: psycopg.Connection, table: str, ids: Sequence[int], at: datetime | None = None, *,
          schema: str = "public") -> list[int]:
    """Write to these rows as Odoo would: change a field, write_uid := 2, write_date := `at` (default now,
    UTC, whole seconds; an aware `at` is converted to UTC). Touching a product.template bumps its variants'
    write_date too (odoo.md section 6). Commits; returns the ids that exist."""
    model = _model_of(table)
    change = _TOUCHED.get(model.table)
    stamp = sql.SQL("write_uid = 2, write_date = {}").format(_at(at))
    assignments = sql.SQL(", ").join([sql.SQL(change), stamp] if change else [stamp])
    rows = conn.execute(sql.SQL("update {} set {} where id = any(%s) returning id, write_date").format(
        _table(schema, model.table), assignments), (list(ids),)).fetchall()
    if model.table == "product_template" and rows:
        conn.execute(sql.SQL("update {} p set write_date = greatest(p.write_date, t.write_date) from {} t "
                             "where t.id = p.product_tmpl_id and t.id = any(%s)").format(
            _table(schema, "product_product"), _table(schema, "product_template")), (list(ids),))
    _finish(conn)
    return sorted(r[0] for r in rows)


def set_write_date(conn: psycopg.Connection, table: str, ids: Sequence[int], at: datetime, *,
                   schema: str = "public") -> None:
    """Set write_date of these rows to exactly `at` and change nothing else (to make ties); commits."""
    model = _model_of(table)
    conn.execute(sql.SQL("update {} set write_date = %s where id = any(%s)").format(_table(schema, model.table)),
                 (_naive_utc(at), list(ids)))
    _finish(conn)


def archive(conn: psycopg.Connection, table: str, ids: Sequence[int], at: datetime | None = None, *,
            schema: str = "public") -> None:
    """Set active = false (bumping write_date, as an Odoo write does); commits. Refuses a model without
    `active` (account.move, account.move.line, sale.order: odoo.md section 9)."""
    model = _model_of(table)
    if "active" not in model.fields:
        raise ValueError(f"{model.name} has no active field; it cannot be archived")
    conn.execute(sql.SQL("update {} set active = false, write_uid = 2, write_date = {} where id = any(%s)").format(
        _table(schema, model.table), _at(at)), (list(ids),))
    _finish(conn)


def delete(conn: psycopg.Connection, table: str, ids: Sequence[int], *, schema: str = "public") -> None:
    """Delete these rows as `unlink` does: no trace (odoo.md section 6). A move takes its lines with it;
    a row a required many2one still points at (a partner with sale orders) is refused, as Odoo refuses it.
    Commits."""
    model = _model_of(table)
    conn.execute(sql.SQL("delete from {} where id = any(%s)").format(_table(schema, model.table)), (list(ids),))
    _finish(conn)


def insert_partners(conn: psycopg.Connection, n: int, at: datetime | None = None, *, schema: str = "public",
                    seed: int = 1) -> list[int]:
    """Create `n` shared individual customers with create_date = write_date = `at` (default now, UTC);
    commits; returns their ids in order."""
    rng = random.Random(seed)
    ids = []
    stamp = _at(at)
    for _ in range(n):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        name = f"{first} {last}"
        row = conn.execute(sql.SQL(
            "insert into {} (name, complete_name, is_company, type, email, lang, active, customer_rank, "
            "supplier_rank, create_uid, create_date, write_uid, write_date) values (%s, %s, false, 'contact', "
            "%s, 'en_US', true, 1, 0, 2, {stamp}, 2, {stamp}) returning id").format(
            _table(schema, "res_partner"), stamp=stamp),
            (name, name, f"{ascii_fold(first)}.{ascii_fold(last)}.{rng.randrange(10**6)}@example.com")).fetchone()
        assert row is not None
        ids.append(row[0])
    conn.execute(sql.SQL("update {} set commercial_partner_id = id where id = any(%s)").format(
        _table(schema, "res_partner")), (ids,))
    _finish(conn)
    return ids
