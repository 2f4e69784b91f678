"""Odoo model metadata, per ../shared/api-contracts/odoo.md section 9: field types, relations, `_order`, display names.

One Odoo database's accounting, sales and catalogue tables as the ORM lays them out. Table = model name with
`.` -> `_`; every table has `id serial` and the magic columns `create_uid`, `create_date`, `write_uid`,
`write_date` (`timestamp without time zone`, UTC, whole seconds); translatable fields are JSONB
`{"en_US": ..., "fr_FR": ...}` (some only `en_US`); monetary = `numeric`; selection = `varchar`;
`account_move`, `account_move_line` and `sale_order` have no `active`; `product_product` has no
`name`/`company_id` of its own (`_inherits` product.template); `res_partner.company_id` NULL means shared
between companies. `MODELS` describes each model (Odoo field types, relations, `_order`, display name);
odoo_schema.py generates the DDL from it and the emulator serves from it, so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Field:
    """One Odoo field: its ORM type and, for a stored one, the column behind it."""

    type: str  # char text integer float monetary boolean date datetime selection many2one one2many
    relation: str | None = None
    inverse: str | None = None  # one2many: the many2one on `relation` pointing back
    translate: bool = False
    required: bool = False
    selection: tuple[str, ...] = ()
    ondelete: str | None = None  # many2one; Odoo's default is restrict when required, else set null

    @property
    def stored(self) -> bool:
        return self.type != "one2many"

    def column_type(self) -> str:
        if self.translate:
            return "jsonb"  # odoo/odoo#97692, odoo.md section 9
        return {"char": "varchar", "text": "text", "integer": "integer", "float": "numeric",
                "monetary": "numeric", "boolean": "boolean", "date": "date",
                "datetime": "timestamp without time zone", "selection": "varchar",
                "many2one": "integer"}[self.type]


@dataclass(frozen=True)
class Model:
    """One Odoo model: its table, `_order`, fields (magic columns included, `id` not) and display name."""

    name: str
    order: str
    fields: Mapping[str, Field]
    display: str = "{name}"  # SQL for display_name; `{f}` stands for field f of this model
    inherits: tuple[str, str] | None = None  # `_inherits`: (parent model, the many2one linking to it)

    @property
    def table(self) -> str:
        return self.name.replace(".", "_")

    def columns(self) -> list[str]:
        return [name for name, f in self.fields.items() if f.stored]


def _char(*, translate: bool = False, required: bool = False) -> Field:
    return Field("char", translate=translate, required=required)


def _sel(*values: str) -> Field:
    return Field("selection", selection=values)


def _m2o(relation: str, *, required: bool = False, ondelete: str | None = None) -> Field:
    return Field("many2one", relation, required=required,
                 ondelete=ondelete or ("restrict" if required else "set null"))


_BOOL, _INT, _FLOAT, _MONEY = Field("boolean"), Field("integer"), Field("float"), Field("monetary")
_DATE, _TEXT = Field("date"), Field("text")
_MAGIC = {"create_uid": _m2o("res.users"), "create_date": Field("datetime"),
          "write_uid": _m2o("res.users"), "write_date": Field("datetime")}


def _model(name: str, order: str, fields: dict[str, Field], **kw: Any) -> Model:
    return Model(name, order, MappingProxyType({**fields, **_MAGIC}), **kw)


_DRAFT_LABEL = ("case {move_type} when 'out_invoice' then 'Draft Invoice' when 'out_refund' then 'Draft Credit"
                " Note' when 'in_invoice' then 'Draft Bill' when 'in_refund' then 'Draft Vendor Credit Note'"
                " else 'Draft Entry' end")
_MOVE_TYPES = ("entry", "out_invoice", "out_refund", "in_invoice", "in_refund", "out_receipt", "in_receipt")
_PAYMENT_STATES = ("not_paid", "in_payment", "paid", "partial", "reversed", "blocked", "invoicing_legacy")

MODELS: Mapping[str, Model] = MappingProxyType({m.name: m for m in (
    _model("res.currency", "active desc, name", {
        "name": _char(required=True), "full_name": _char(), "symbol": _char(required=True), "rounding": _FLOAT,
        "position": _sel("after", "before"), "active": _BOOL}),
    _model("res.company", "sequence, name", {
        "name": _char(required=True), "partner_id": _m2o("res.partner", required=True),
        "currency_id": _m2o("res.currency", required=True), "parent_id": _m2o("res.company"),
        "parent_path": _char(), "active": _BOOL, "sequence": _INT, "email": _char(), "phone": _char()}),
    _model("res.partner", "complete_name ASC, id DESC", {
        "name": _char(), "complete_name": _char(), "company_id": _m2o("res.company"),
        "parent_id": _m2o("res.partner"), "commercial_partner_id": _m2o("res.partner"), "is_company": _BOOL,
        "type": _sel("contact", "invoice", "delivery", "other"), "email": _char(), "phone": _char(),
        "vat": _char(), "ref": _char(), "street": _char(), "city": _char(), "zip": _char(), "lang": _char(),
        "user_id": _m2o("res.users"), "active": _BOOL, "customer_rank": _INT, "supplier_rank": _INT},
        display="{complete_name}"),
    # res.users keeps name, email, ... on its partner (`_inherits`); its display name is the partner's name.
    _model("res.users", "name, login", {
        "login": _char(required=True), "partner_id": _m2o("res.partner", required=True),
        "company_id": _m2o("res.company", required=True), "active": _BOOL, "share": _BOOL},
        inherits=("res.partner", "partner_id")),
    _model("product.category", "complete_name", {
        "name": _char(required=True), "complete_name": _char(), "parent_id": _m2o("product.category"),
        "parent_path": _char()}, display="{complete_name}"),
    _model("uom.uom", "factor DESC, id", {
        "name": _char(translate=True, required=True), "factor": _FLOAT, "rounding": _FLOAT,
        "uom_type": _sel("bigger", "reference", "smaller"), "active": _BOOL}),
    _model("product.template", "priority desc, name", {
        "name": _char(translate=True, required=True), "description_sale": Field("text", translate=True),
        "active": _BOOL, "company_id": _m2o("res.company"), "categ_id": _m2o("product.category"),
        "list_price": _FLOAT, "type": _sel("consu", "service", "product"), "sale_ok": _BOOL,
        "purchase_ok": _BOOL, "uom_id": _m2o("uom.uom"), "uom_po_id": _m2o("uom.uom"),
        "priority": _sel("0", "1")}),
    _model("product.product", "priority desc, default_code, name, id", {
        "product_tmpl_id": _m2o("product.template", required=True, ondelete="cascade"),
        "default_code": _char(), "barcode": _char(), "active": _BOOL, "combination_indices": _char()},
        inherits=("product.template", "product_tmpl_id"),
        display="case when coalesce({default_code}, '') <> '' then '[' || {default_code} || '] ' else '' end"
                " || {name}"),
    _model("account.account", "code, company_id", {
        "code": _char(required=True), "name": _char(translate=True, required=True),
        "account_type": _sel("asset_receivable", "liability_payable", "income", "expense", "liability_current",
                             "asset_current", "asset_cash"),
        "reconcile": _BOOL, "company_id": _m2o("res.company", required=True)},
        display="{code} || ' ' || {name}"),
    _model("account.journal", "sequence, type, code", {
        "name": _char(translate=True, required=True), "code": _char(required=True),
        "type": _sel("sale", "purchase", "cash", "bank", "general"),
        "company_id": _m2o("res.company", required=True), "sequence": _INT, "active": _BOOL}),
    _model("account.tax", "sequence,id", {
        "name": _char(translate=True, required=True), "amount": _FLOAT,
        "type_tax_use": _sel("sale", "purchase", "none"), "company_id": _m2o("res.company", required=True),
        "sequence": _INT, "active": _BOOL}),
    _model("crm.team", "sequence ASC, create_date DESC, id DESC", {
        "name": _char(translate=True, required=True), "company_id": _m2o("res.company"), "sequence": _INT,
        "user_id": _m2o("res.users"), "active": _BOOL}),
    _model("account.move", "date desc, name desc, invoice_date desc, id desc", {
        "name": _char(), "ref": _char(), "move_type": Field("selection", selection=_MOVE_TYPES, required=True),
        "state": _sel("draft", "posted", "cancel"), "date": _DATE, "invoice_date": _DATE,
        "invoice_date_due": _DATE, "journal_id": _m2o("account.journal", required=True),
        "company_id": _m2o("res.company"), "partner_id": _m2o("res.partner"),
        "commercial_partner_id": _m2o("res.partner"), "currency_id": _m2o("res.currency", required=True),
        "amount_untaxed": _MONEY, "amount_tax": _MONEY, "amount_total": _MONEY, "amount_residual": _MONEY,
        "amount_untaxed_signed": _MONEY, "amount_tax_signed": _MONEY, "amount_total_signed": _MONEY,
        "amount_residual_signed": _MONEY, "payment_state": _sel(*_PAYMENT_STATES),
        "reversed_entry_id": _m2o("account.move"), "invoice_user_id": _m2o("res.users"),
        "line_ids": Field("one2many", "account.move.line", inverse="move_id")},
        display="coalesce(nullif({name}, '/'), " + _DRAFT_LABEL + " || ' (* ' || {id} || ')')"),
    _model("account.move.line", "date desc, move_name desc, id", {
        "move_id": _m2o("account.move", required=True, ondelete="cascade"), "move_name": _char(),
        "journal_id": _m2o("account.journal"), "company_id": _m2o("res.company"),
        "parent_state": _sel("draft", "posted", "cancel"), "date": _DATE, "invoice_date": _DATE,
        "account_id": _m2o("account.account"), "partner_id": _m2o("res.partner"), "name": _char(),
        "debit": _MONEY, "credit": _MONEY, "balance": _MONEY, "amount_currency": _MONEY,
        "currency_id": _m2o("res.currency", required=True), "company_currency_id": _m2o("res.currency"),
        "amount_residual": _MONEY, "reconciled": _BOOL, "matching_number": _char(),
        "display_type": _sel("product", "tax", "payment_term", "line_section", "line_note"),
        "product_id": _m2o("product.product"), "quantity": _FLOAT, "price_unit": _FLOAT,
        "tax_line_id": _m2o("account.tax")},
        display="{move_name}"),
    _model("sale.order", "date_order desc, id desc", {
        "name": _char(required=True), "state": _sel("draft", "sent", "sale", "cancel"), "locked": _BOOL,
        "company_id": _m2o("res.company", required=True), "partner_id": _m2o("res.partner", required=True),
        "partner_invoice_id": _m2o("res.partner", required=True),
        "partner_shipping_id": _m2o("res.partner", required=True), "date_order": Field("datetime"),
        "currency_id": _m2o("res.currency"), "amount_untaxed": _MONEY, "amount_tax": _MONEY,
        "amount_total": _MONEY, "invoice_status": _sel("upselling", "invoiced", "to invoice", "no"),
        "user_id": _m2o("res.users"), "team_id": _m2o("crm.team")}),
)})

TABLES: Mapping[str, Model] = MappingProxyType({m.table: m for m in MODELS.values()})
