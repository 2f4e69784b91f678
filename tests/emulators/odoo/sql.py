"""SQL for the Odoo emulator: columns of a model (with `_inherits`), domains, orders, SELECT lists, wire values.

Domains take = != > >= < <= in, not in, like, ilike, not like, not ilike, =like, =ilike, prefix & | !
(implicit & between terms), dotted paths through a many2one, and a string against a many2one (a name search
on the target's display name); orders are Odoo's `_order` syntax (../shared/api-contracts/odoo.md section 5);
values go on the wire as odoo.md section 4 says.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from psycopg import sql

from tests.emulators.odoo.errors import OdooError, type_error, value_error
from tests.emulators.odoo.models import MODELS, Field, Model


# -- SQL from models, domains and orders -------------------------------------------------------------------

_ID = Field("integer")
_DISPLAY = Field("char")
_OPERATORS = frozenset(("=", "!=", "<>", ">", ">=", "<", "<=", "in", "not in", "like", "ilike", "not like",
                        "not ilike", "=like", "=ilike"))
_CASTS = {"integer": "integer", "float": "numeric", "monetary": "numeric", "boolean": "boolean", "date": "date",
          "datetime": "timestamp", "many2one": "integer"}
_ORDER_TERM = re.compile(r"^([a-z0-9_]+)(?:\s+(asc|desc))?(?:\s+nulls\s+(first|last))?$", re.IGNORECASE)


class Params:
    """Bound query parameters under generated names, so fragments can be composed in any order."""

    def __init__(self, lang: str) -> None:
        self.values: dict[str, Any] = {"lang": lang}
        self._names = itertools.count()

    def add(self, value: Any, cast: str | None = None) -> sql.Composable:
        name = f"p{next(self._names)}"
        self.values[name] = value
        placeholder = sql.Placeholder(name)
        return sql.SQL("{}::{}").format(placeholder, sql.SQL(cast)) if cast else placeholder


class Scope:
    """The column expressions of one model under a table alias, with the `_inherits` joins they need."""

    def __init__(self, schema: str, model: Model, params: Params, aliases: Iterator[int]) -> None:
        self.schema, self.model, self.params, self._aliases = schema, model, params, aliases
        self.alias = f"t{next(aliases)}"
        self._parent: Scope | None = None
        self._join: sql.Composable | None = None

    def sub(self, model: Model) -> Scope:
        return Scope(self.schema, model, self.params, self._aliases)

    def parent(self) -> Scope | None:
        if self.model.inherits is None:
            return None
        if self._parent is None:
            parent_model, link = self.model.inherits
            self._parent = self.sub(MODELS[parent_model])
            self._join = sql.SQL(" left join {} {} on {}.id = {}.{}").format(
                sql.Identifier(self.schema, self._parent.model.table), sql.Identifier(self._parent.alias),
                sql.Identifier(self._parent.alias), sql.Identifier(self.alias), sql.Identifier(link))
        return self._parent

    def field(self, name: str) -> Field | None:
        if name == "id":
            return _ID
        if name == "display_name":
            return _DISPLAY
        if name in self.model.fields:
            return self.model.fields[name]
        parent = self.parent()  # product.product reads name/company_id from its template (odoo.md section 9)
        return parent.field(name) if parent is not None and name != "id" else None

    def need(self, name: str) -> Field:
        found = self.field(name)
        if found is None:
            raise value_error(f"Invalid field {name!r} on model {self.model.name!r}")
        return found

    def column(self, name: str) -> sql.Composable:
        """The value of field `name` as SQL; a translated field in the context lang, else en_US (odoo.md section 9)."""
        if name == "display_name":
            return self.display()
        own = self.model.fields.get(name)
        if name == "id" or (own is not None and own.stored):
            column = sql.Identifier(self.alias, name)
            if own is not None and own.translate:
                return sql.SQL("coalesce({c}->>{lang}, {c}->>'en_US')").format(c=column,
                                                                            lang=sql.Placeholder("lang"))
            return column
        parent = self.parent()
        if own is None and parent is not None and parent.field(name) is not None:
            return parent.column(name)
        raise value_error(f"Invalid field {name!r} on model {self.model.name!r}")

    def display(self) -> sql.Composable:
        names = set(re.findall(r"\{(\w+)\}", self.model.display))
        return sql.SQL(self.model.display).format(**{n: self.column(n) for n in names})

    def source(self) -> sql.Composable:
        parts: list[sql.Composable] = [sql.SQL("{} {}").format(sql.Identifier(self.schema, self.model.table),
                                                               sql.Identifier(self.alias))]
        scope: Scope | None = self
        while scope is not None and scope._join is not None:
            parts.append(scope._join)
            scope = scope._parent
        return sql.Composed(parts)

    def display_of(self, name: str) -> sql.Composable:
        """The display name of the many2one `name`'s target row, as a scalar subquery."""
        field = self.need(name)
        assert field.relation is not None
        target = self.sub(MODELS[field.relation])
        display = target.display()  # before source(): it may need the target's _inherits join
        return sql.SQL("(select {} from {} where {}.id = {})").format(display, target.source(),
                                                                    sql.Identifier(target.alias), self.column(name))


def _leaf_sql(scope: Scope, leaf: Any) -> tuple[sql.Composable, str]:
    """One `[field, operator, value]` term as SQL; returns the SQL and the field's first path element."""
    if not isinstance(leaf, (list, tuple)) or len(leaf) != 3 or not isinstance(leaf[0], (str, int)):
        raise value_error(f"Invalid leaf {leaf!r}")
    path, operator, value = leaf
    if path in (0, 1) and operator == "=" and value == 1:  # Odoo's TRUE_LEAF and FALSE_LEAF
        return sql.SQL("true" if path == 1 else "false"), ""
    if not isinstance(operator, str) or operator.lower() not in _OPERATORS:
        raise value_error(f"Invalid operator {operator!r} in leaf {leaf!r}")
    operator = "!=" if operator == "<>" else operator.lower()
    name, _, rest = str(path).partition(".")
    field = scope.need(name)
    if rest:
        if field.type != "many2one":
            raise value_error(f"Invalid field {str(path)!r} on model {scope.model.name!r}")
        return sql.SQL("{} in {}").format(scope.column(name), _subselect(scope, name, [rest, operator, value])), name
    if field.type == "one2many":
        raise value_error(f"Searching on one2many {name!r} is not supported by the emulator")
    column = scope.column(name)
    if field.type == "many2one" and isinstance(value, str) and operator not in ("in", "not in"):
        # A string against a many2one is a name search on the target (as Odoo's name_search).
        positive = operator.replace("not ", "").replace("!=", "=")
        names = _subselect_display(scope, name, positive, value)
        if positive == operator:
            return sql.SQL("{} in {}").format(column, names), name
        return sql.SQL("({c} not in {n} or {c} is null)").format(c=column, n=names), name
    return _condition(scope, column, field, operator, value, leaf), name


def _subselect(scope: Scope, name: str, leaf: list[Any]) -> sql.Composable:
    target = scope.sub(MODELS[scope.need(name).relation or ""])
    condition, _ = _leaf_sql(target, leaf)
    return sql.SQL("(select {}.id from {} where {})").format(sql.Identifier(target.alias), target.source(),
                                                             condition)


def _subselect_display(scope: Scope, name: str, operator: str, value: str) -> sql.Composable:
    target = scope.sub(MODELS[scope.need(name).relation or ""])
    condition = _condition(target, target.display(), _DISPLAY, operator, value, [name, operator, value])
    # (condition before source(): the display name may need the target's _inherits join)
    return sql.SQL("(select {}.id from {} where {})").format(sql.Identifier(target.alias), target.source(),
                                                             condition)


def _condition(scope: Scope, column: sql.Composable, field: Field, operator: str, value: Any,
               leaf: Any) -> sql.Composable:
    cast = "text" if field.translate else _CASTS.get(field.type, "text")
    add = scope.params.add
    if operator in ("in", "not in"):
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if field.type == "boolean":  # False is a value, and an unset boolean reads as False too
            present, null = [bool(v) for v in values if v is not None], False in values or None in values
        else:
            present = [v for v in values if v is not False and v is not None]
            null = len(present) < len(values)
        hit = sql.SQL("{} = any({})").format(column, add(present, f"{cast}[]")) if present else sql.SQL("false")
        if operator == "in":
            return sql.SQL("({} or {} is null)").format(hit, column) if null else hit
        miss = sql.SQL("not coalesce({}, false)").format(hit)
        return sql.SQL("({} and {} is not null)").format(miss, column) if null else \
            sql.SQL("({} or {} is null)").format(miss, column)
    if value is False or value is None:
        if operator not in ("=", "!="):
            raise value_error(f"Invalid leaf {leaf!r}: {operator} needs a value")
        if field.type == "boolean":
            return sql.SQL("{} is {}true").format(column, sql.SQL("not " if operator == "=" else ""))
        return sql.SQL("{} is {}null").format(column, sql.SQL("" if operator == "=" else "not "))
    if operator in ("like", "ilike", "not like", "not ilike", "=like", "=ilike"):
        pattern = str(value) if operator.startswith("=") else f"%{value}%"
        sql_op = sql.SQL(operator.lstrip("="))
        text = sql.SQL("{}::text").format(column)
        if operator.startswith("not"):
            return sql.SQL("({t} {op} {v} or {c} is null)").format(t=text, op=sql_op, v=add(pattern), c=column)
        return sql.SQL("{} {} {}").format(text, sql_op, add(pattern))
    if field.type == "boolean" and operator in ("=", "!="):
        wanted = bool(value) == (operator == "=")
        return sql.SQL("{} is {}").format(column, sql.SQL("true" if wanted else "not true"))
    if operator == "!=":  # Odoo keeps NULL rows on !=
        return sql.SQL("({c} <> {v} or {c} is null)").format(c=column, v=add(value, cast))
    return sql.SQL("{} {} {}").format(column, sql.SQL(operator), add(value, cast))


def where_sql(scope: Scope, domain: Any) -> tuple[sql.Composable, set[str]]:
    """A domain in Polish notation as SQL, '&' implied between terms; also the fields its leaves name."""
    if domain in (None, False):
        domain = []
    if not isinstance(domain, (list, tuple)):
        raise value_error(f"Invalid domain {domain!r}: a domain is a list")
    items, position, named = list(domain), 0, set()

    def term() -> sql.Composable:
        nonlocal position
        if position >= len(items):
            raise value_error(f"Invalid domain {domain!r}: an operator lacks its operands")
        item = items[position]
        position += 1
        if item == "!":
            return sql.SQL("(not coalesce({}, false))").format(term())
        if item in ("&", "|"):
            left, right = term(), term()
            return sql.SQL("({} {} {})").format(left, sql.SQL("and" if item == "&" else "or"), right)
        condition, name = _leaf_sql(scope, item)
        named.add(name)
        return condition

    terms = []
    while position < len(items):
        terms.append(term())
    return (sql.SQL(" and ").join(terms) if terms else sql.SQL("true")), named


def order_sql(scope: Scope, order: Any) -> sql.Composable:
    """`order` (default the model's `_order`, odoo.md section 5) as ORDER BY terms, ending with id."""
    text = order or scope.model.order
    if not isinstance(text, str):
        raise value_error(f"Invalid order {order!r}")
    terms: list[sql.Composable] = []
    seen_id = False
    for part in text.split(","):
        match = _ORDER_TERM.match(part.strip())
        if not match:
            raise OdooError("odoo.exceptions.UserError",
                            f'Invalid "order" specified ({text}). A valid "order" specification is a '
                            "comma-separated list of valid field names (optionally followed by asc/desc for the "
                            "direction)")
        name, direction, nulls = match.groups()
        field = scope.need(name)
        if field.type == "one2many":
            raise value_error(f"Cannot order by one2many {name!r}")
        seen_id = seen_id or name == "id"
        terms.append(sql.SQL("{}{}{}").format(
            scope.column(name), sql.SQL(f" {direction}" if direction else ""),
            sql.SQL(f" nulls {nulls}" if nulls else "")))
    if not seen_id:
        terms.append(sql.SQL("{}.id").format(sql.Identifier(scope.alias)))
    return sql.SQL(", ").join(terms)


# -- values on the wire -------------------------------------------------------------------------------------

def _wire(field: Field, value: Any, *, load: bool = True) -> Any:
    """One value as Odoo puts it on the wire (odoo.md section 4)."""
    kind = field.type
    if kind in ("integer", "float", "monetary"):
        # NULL numbers read as 0, as Odoo's Integer/Float fields convert them (unconfirmed in the contract)
        return float(value) if isinstance(value, Decimal) else (value or (0.0 if kind != "integer" else 0))
    if kind == "one2many":
        return list(value or [])
    if value is None or value == "":  # empty char, many2one, date: false, not null (odoo.md section 4)
        return False
    if kind == "many2one":
        return [value[0], value[1] or ""] if load else value[0]
    if kind == "datetime":
        return value.strftime("%Y-%m-%d %H:%M:%S")  # UTC, no zone suffix (odoo.md section 4)
    if kind == "date":
        return value.isoformat()
    return value


@dataclass(frozen=True)
class Selection:
    """The SELECT list of a read: the SQL expressions (two for a many2one) and the fields they render."""

    expressions: list[sql.Composable]
    fields: list[tuple[str, Field]]

    def render(self, row: Sequence[Any], *, load: bool) -> dict[str, Any]:
        values, out = iter(row), {}
        for name, field in self.fields:
            value = next(values)
            if field.type == "many2one":
                display = next(values)
                value = None if value is None else (value, display)
            out[name] = _wire(field, value, load=load)
        return out


def select_sql(scope: Scope, names: Sequence[str]) -> Selection:
    expressions: list[sql.Composable] = []
    fields: list[tuple[str, Field]] = []
    for name in names:
        field = scope.need(name)
        if field.type == "many2one":  # two columns: the id, then the target's display name
            expressions += [scope.column(name), scope.display_of(name)]
        elif field.type == "one2many":
            assert field.relation is not None and field.inverse is not None
            lines = scope.sub(MODELS[field.relation])
            order = order_sql(lines, None)
            expressions.append(sql.SQL("array(select {a}.id from {s} where {a}.{inv} = {me}.id order by {o})").format(
                a=sql.Identifier(lines.alias), s=lines.source(), inv=sql.Identifier(field.inverse),
                me=sql.Identifier(scope.alias), o=order))
        else:
            expressions.append(scope.column(name))
        fields.append((name, field))
    return Selection(expressions, fields)


def readable(model: Model, fields: Any) -> list[str]:
    if fields in (None, False, []):
        return ["id", *model.fields, *_inherited(model), "display_name"]
    if not isinstance(fields, (list, tuple)) or not all(isinstance(f, str) for f in fields):
        raise type_error(f"fields must be a list of field names, got {fields!r}")
    return ["id", *[f for f in dict.fromkeys(fields) if f != "id"]]  # id always included (odoo.md section 4)


def _inherited(model: Model) -> list[str]:
    if model.inherits is None:
        return []
    parent = MODELS[model.inherits[0]]
    return [n for n in [*parent.fields, *_inherited(parent)] if n not in model.fields]
