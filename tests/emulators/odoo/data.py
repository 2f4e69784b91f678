"""The generated part of the Odoo data: partners, products, journal entries and sale orders, from one seed.

The partners Odoo creates (OdooBot archived, Mitchell Admin) plus companies with contacts, invoice contacts,
nameless delivery addresses and individuals (some archived, some private to one company); product templates
with variants; invoices, bills, credit notes (some reversing an invoice) and miscellaneous entries whose
lines balance per move; quotations and orders. Write dates tie on purpose: an initial import creates 60 %
of the partners in one transaction, and a nightly recompute (`RECOMPUTE`) rewrote a slice of every table.
"""

from __future__ import annotations

import json
import random
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from tests.emulators.odoo.reference import (BRAND, CHART, COMPANY_CURRENCY, COUNTRIES, END, EUR, FIRST, IMPORT,
                                            JOURNALS, LAST, PRODUCTS, RATES, RECOMPUTE, SALESPEOPLE, SERIES, START,
                                            STREETS, TAX, TRADE, USD, VARIANTS, ascii_fold, ean13, i18n, money,
                                            reference_rows)


class Generator:
    """Draws every generated row from one seeded random source, so a seed always gives the same database."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.rows = reference_rows()
        self.sellable: list[tuple[int, dict[str, Any], str]] = []  # (variant id, its template, English name)

    def moment(self, lo: datetime, hi: datetime) -> datetime:
        return lo + timedelta(seconds=self.rng.randrange(max(1, int((hi - lo).total_seconds()))))

    def stamp(self, row: dict[str, Any], created: datetime, written: datetime, uid: int) -> None:
        row.update(create_uid=uid, create_date=created, write_uid=uid, write_date=written)
        if written < RECOMPUTE and self.rng.random() < 0.08:
            row.update(write_uid=1, write_date=RECOMPUTE)

    def edited(self, created: datetime, share: float) -> datetime:
        if self.rng.random() >= share:
            return created
        return min(END, created + timedelta(seconds=self.rng.randrange(1, 200 * 86400)))

    # -- partners ---------------------------------------------------------------------------------------

    def fixed_partners(self) -> None:
        fixed = ((1, "Acme Corporation", True, 1, "info@acme-corp.com", True),
                 (2, "OdooBot", False, None, "odoobot@example.com", False),
                 (3, "Mitchell Admin", False, 1, "admin@acme-corp.com", True),
                 (4, "Acme France SAS", True, 2, "contact@acme-corp.fr", True),
                 (5, "Acme Corporation (West)", True, 3, "west@acme-corp.com", True),
                 (6, "Marc Demo", False, 1, "marc.demo@acme-corp.com", True),
                 (7, "Sophie Martin", False, 1, "sophie.martin@acme-corp.com", True),
                 (8, "John Miller", False, 1, "john.miller@acme-corp.com", True),
                 (9, "Léa Dubois", False, 2, "lea.dubois@acme-corp.fr", True))
        self.rows["res_partner"] = [
            {"id": pid, "name": name, "complete_name": name, "company_id": company, "parent_id": None,
             "commercial_partner_id": pid, "is_company": is_company, "type": "contact", "email": email,
             "phone": None, "vat": "FR32123456789" if pid == 4 else None, "ref": None, "street": None,
             "city": None, "zip": None, "lang": "fr_FR" if company == 2 else "en_US", "user_id": None,
             "active": active, "customer_rank": 0, "supplier_rank": 0, "create_uid": 1,
             "create_date": START - timedelta(days=2), "write_uid": 1, "write_date": START - timedelta(days=2)}
            for pid, name, is_company, company, email, active in fixed]

    def partners(self, count: int, first_id: int) -> list[dict[str, Any]]:
        """`count` partners: companies (80 % of draws) with 0-3 children, and individuals."""
        rng, pid = self.rng, first_id
        out: list[dict[str, Any]] = []
        weights = [c[1] for c in COUNTRIES]
        while len(out) < count:
            country, _, suffixes, lang, tld, cities = rng.choices(COUNTRIES, weights)[0]
            city, zip_code = rng.choice(cities)
            shared = rng.random() < 0.85
            company_id = None if shared else (2 if country == "FR" else 1)
            base = {"street": f"{rng.randint(1, 240)} {rng.choice(STREETS)}", "city": city, "zip": zip_code,
                    "lang": lang, "company_id": company_id, "user_id": rng.choice((None,) + SALESPEOPLE),
                    "active": rng.random() >= 0.05, "phone": self.phone(country)}
            if rng.random() < 0.8:
                brand, trade = rng.choice(BRAND), rng.choice(TRADE)
                name = f"{brand} {trade} {rng.choice(suffixes)}"
                domain = f"{ascii_fold(brand)}-{ascii_fold(trade)}.{tld}"
                parent = {**base, "id": pid, "name": name, "complete_name": name, "parent_id": None,
                          "commercial_partner_id": pid, "is_company": True, "type": "contact",
                          "email": None if rng.random() < 0.1 else f"info@{domain}", "vat": self.vat(country),
                          "ref": f"C{pid:05d}" if rng.random() < 0.5 else None,
                          "customer_rank": rng.choice((0, 1, 2, 5, 12)),
                          "supplier_rank": rng.choice((0, 0, 0, 1, 3))}
                out.append(parent)
                pid += 1
                for kind in rng.choice(((), ("contact",), ("contact", "invoice"), ("contact", "delivery"),
                                        ("contact", "invoice", "delivery"))):
                    if len(out) >= count:
                        break
                    first, last = rng.choice(FIRST), rng.choice(LAST)
                    person = None if kind == "delivery" else f"{first} {last}"
                    label = person or "Delivery Address"  # Odoo names a nameless address by its type
                    out.append({**base, "id": pid, "name": person, "complete_name": f"{name}, {label}",
                                "parent_id": parent["id"], "commercial_partner_id": parent["id"],
                                "is_company": False, "type": kind, "vat": parent["vat"], "ref": None,
                                "email": None if person is None else f"{ascii_fold(first)}.{ascii_fold(last)}@{domain}",
                                "active": parent["active"] and base["active"], "customer_rank": 0,
                                "supplier_rank": 0})
                    pid += 1
            else:
                first, last = rng.choice(FIRST), rng.choice(LAST)
                out.append({**base, "id": pid, "name": f"{first} {last}", "complete_name": f"{first} {last}",
                            "parent_id": None, "commercial_partner_id": pid, "is_company": False,
                            "type": "contact", "vat": None, "ref": None, "customer_rank": rng.choice((1, 1, 2)),
                            "supplier_rank": 0,
                            "email": f"{ascii_fold(first)}.{ascii_fold(last)}{pid}@example."
                                     f"{rng.choice(('com', 'org', 'net'))}"})
                pid += 1
        return out

    def phone(self, country: str) -> str | None:
        n = self.rng.randrange(10**7)
        return {"US": f"+1 555-{n % 1000:03d}-{n // 1000 % 10000:04d}", "FR": f"+33 6 {n % 100:02d} "
                f"{n // 100 % 100:02d} {n // 10**4 % 100:02d} {n // 10**6:02d}",
                "BE": f"+32 470 {n % 1000:03d} {n // 1000 % 1000:03d}",
                "DE": f"+49 30 {n:07d}"}[country] if self.rng.random() < 0.7 else None

    def vat(self, country: str) -> str | None:
        if country == "US" or self.rng.random() < 0.15:
            return None
        n = self.rng.randrange(10**9)
        return {"FR": f"FR{n % 97:02d}{n:09d}", "BE": f"BE0{n:09d}", "DE": f"DE{n:09d}"}[country]

    def stamp_partners(self, partners: list[dict[str, Any]]) -> None:
        imported = int(len(partners) * 0.6)
        later = sorted(self.moment(START, END) for _ in partners[imported:])
        for i, row in enumerate(partners):
            if i < imported:
                self.stamp(row, IMPORT, self.edited(IMPORT, 0.3), 2)
            else:
                created = later[i - imported]
                self.stamp(row, created, self.edited(created, 0.3), self.rng.choice(SALESPEOPLE))

    # -- catalogue ----------------------------------------------------------------------------------------

    def products(self, count: int) -> None:
        rng = self.rng
        templates: list[dict[str, Any]] = []
        variants: list[dict[str, Any]] = []
        for i in range(count):
            en, fr, price, kind = PRODUCTS[i % len(PRODUCTS)]
            series = SERIES[i // len(PRODUCTS)] if i // len(PRODUCTS) < len(SERIES) else \
                f"Series {i // len(PRODUCTS)}"
            name_en = f"{en} {series}".strip()
            name_fr = f"{fr} {series}".strip() if fr else None
            service = kind in ("service", "hours")
            created = self.moment(START - timedelta(days=1), START + timedelta(days=300))
            template: dict[str, Any] = {
                "id": i + 1, "name": i18n(name_en, name_fr), "active": rng.random() >= 0.06,
                "description_sale": None if rng.random() < 0.4 else i18n(
                    f"{name_en}, delivered and installed.", f"{name_fr}, livré et installé." if name_fr else None),
                "company_id": rng.choices((None, 1, 2), (85, 5, 10))[0],
                "categ_id": 5 if service else rng.choice((4, 4, 4, 2, 1)),
                "list_price": money(price * (1 + 0.25 * (i // len(PRODUCTS)))),
                "type": "service" if service else rng.choice(("consu", "product", "product")),
                "sale_ok": rng.random() >= 0.05, "purchase_ok": not service,
                "uom_id": {"hours": 4, "dozen": 2}.get(kind, 1), "uom_po_id": {"hours": 4, "dozen": 2}.get(kind, 1),
                "priority": "1" if rng.random() < 0.1 else "0"}
            self.stamp(template, created, self.edited(created, 0.4), 2)
            templates.append(template)
            colours = rng.sample(VARIANTS, rng.choice((2, 3))) if not service and rng.random() < 0.2 else [None]
            for colour in colours:
                vid = len(variants) + 1
                variant = {"id": vid, "product_tmpl_id": template["id"],
                           "default_code": f"FURN_{vid:04d}" if not service else f"SERV_{vid:04d}",
                           "barcode": ean13(540_000_000_000 + vid * 7) if not service and rng.random() < 0.7
                           else None,
                           "active": template["active"] and rng.random() >= 0.03,
                           "combination_indices": "" if colour is None else str(VARIANTS.index(colour) + 1)}
                own = self.edited(template["create_date"], 0.2)
                self.stamp(variant, template["create_date"], own, 2)
                # product.product.write_date is max(own, template's): odoo.md section 6 (product_product.py)
                variant["write_date"] = max(variant["write_date"], template["write_date"])
                variants.append(variant)
        self.rows["product_template"], self.rows["product_product"] = templates, variants
        self.sellable = [(v["id"], t, json.loads(t["name"])["en_US"]) for v in variants
                         for t in (templates[v["product_tmpl_id"] - 1],) if v["active"] and t["active"]]

    # -- accounting ---------------------------------------------------------------------------------------

    def moves(self, count: int) -> None:
        rng = self.rng
        commercial = [p for p in self.rows["res_partner"] if p["id"] >= 10 and p["commercial_partner_id"] == p["id"]]
        pools = {company: [p for p in commercial if p["company_id"] in (None, company, 1 if company == 3 else company)]
                 for company in (1, 2, 3)}
        vendors = {company: [p for p in pool if p["supplier_rank"]] or pool for company, pool in pools.items()}
        invoice_contacts = {p["parent_id"]: p["id"] for p in self.rows["res_partner"] if p["type"] == "invoice"}
        dates = sorted(self.moment(START, END).date() for _ in range(count))
        sequences: dict[tuple[int, str, int], int] = {}
        moves: list[dict[str, Any]] = []
        lines: list[dict[str, Any]] = []
        reversible: dict[tuple[int, int, str], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
        for mid, day in enumerate(dates, start=1):
            company = rng.choices((1, 2, 3), cum_weights=(60, 85, 100))[0]
            move_type = rng.choices(("out_invoice", "in_invoice", "out_refund", "in_refund", "entry"),
                                    cum_weights=(55, 75, 82, 85, 100))[0]
            state = rng.choices(("posted", "draft", "cancel"), cum_weights=(80, 95, 100))[0]
            journal = JOURNALS[company]["general" if move_type == "entry" else
                                        "sale" if move_type.startswith("out") else "purchase"]
            prefix = {"out_invoice": "INV", "out_refund": "RINV", "in_invoice": "BILL", "in_refund": "RBILL",
                      "entry": "MISC"}[move_type]
            name = "/"  # a draft never posted has no number yet (unconfirmed: 17 keeps "/")
            if state != "draft":
                key = (journal, prefix, day.year)
                sequences[key] = sequences.get(key, 0) + 1
                name = f"{prefix}/{day.year}/{sequences[key]:05d}"
            partner = rng.choice((vendors if move_type.startswith("in") else pools)[company])
            currency = COMPANY_CURRENCY[company]
            if move_type != "entry" and rng.random() < 0.1:
                currency = EUR if currency == USD else USD
            created = datetime.combine(day, datetime.min.time()) + timedelta(hours=8, seconds=rng.randrange(36000))
            move: dict[str, Any] = {"id": mid, "name": name, "move_type": move_type, "state": state, "date": day,
                    "journal_id": journal, "company_id": company, "currency_id": currency,
                    "invoice_user_id": rng.choice(SALESPEOPLE) if move_type.startswith("out") else None,
                    "reversed_entry_id": None}
            if move_type == "entry":
                move_lines = self.entry_lines(move, company, partner if rng.random() < 0.3 else None)
            else:
                contact = invoice_contacts.get(partner["id"]) if rng.random() < 0.15 else None
                move.update(partner_id=contact or partner["id"], commercial_partner_id=partner["id"])
                move_lines = self.invoice_lines(move, company, partner["id"])
            posted = created + timedelta(seconds=rng.randrange(3 * 86400)) if state != "draft" else created
            paid = self.settle(move, move_lines, day)
            if paid:
                posted = min(END, posted + timedelta(days=rng.randint(5, 60)))
            self.stamp(move, created, min(END, posted), rng.choice((2,) + SALESPEOPLE))
            if move_type in ("out_refund", "in_refund") and state == "posted" and rng.random() < 0.6:
                family = reversible.get((company, partner["id"], move_type[:3].rstrip("_")))
                if family:
                    original, term = family.pop()
                    move["reversed_entry_id"] = original["id"]
                    move["ref"] = f"Reversal of: {original['name']}"
                    self.settle_fully(original, term, "reversed", f"A{original['id']}")
                    original.update(write_uid=move["write_uid"],
                                    write_date=max(original["write_date"], move["write_date"]))
            if move_type in ("out_invoice", "in_invoice") and state == "posted":
                reversible.setdefault((company, partner["id"], move_type[:3].rstrip("_")), []).append(
                    (move, move_lines[-1]))
            for line in move_lines:
                line.update(move_id=mid, move_name=name, journal_id=journal, company_id=company, parent_state=state,
                            date=day, invoice_date=move.get("invoice_date"), id=len(lines) + 1)
                line.update(create_uid=move["create_uid"], create_date=move["create_date"])
                lines.append(line)
            move["_lines"] = move_lines
            moves.append(move)
        for move in moves:  # a reversal or payment may have rewritten a move after its lines were made
            for line in move.pop("_lines"):
                line.update({k: move[k] for k in ("write_uid", "write_date")})
        self.rows["account_move"], self.rows["account_move_line"] = moves, lines

    def entry_lines(self, move: dict[str, Any], company: int, partner: dict[str, Any] | None
                    ) -> list[dict[str, Any]]:
        accounts = list(CHART[company])
        amount = money(self.rng.lognormvariate(6, 1.2))
        debit_account, credit_account = self.rng.sample([accounts[3], accounts[6], accounts[4], accounts[5]], 2)
        pid = partner["id"] if partner else None
        move.update(partner_id=pid, commercial_partner_id=pid, ref=self.rng.choice((None, "Accrual", "Adjustment",
                                                                                    "Depreciation")),
                    amount_untaxed=amount, amount_tax=Decimal(0), amount_total=amount,
                    amount_residual=Decimal(0), amount_untaxed_signed=amount, amount_tax_signed=Decimal(0),
                    amount_total_signed=amount, amount_residual_signed=Decimal(0), payment_state="not_paid",
                    invoice_date=None, invoice_date_due=None)
        label = move["ref"] or "Miscellaneous operation"
        return [self.line(move, account, pid, label, balance, balance, display_type="product")
                for account, balance in ((debit_account, amount), (credit_account, -amount))]

    def invoice_lines(self, move: dict[str, Any], company: int, partner: int) -> list[dict[str, Any]]:
        rng, move_type = self.rng, move["move_type"]
        sale = move_type.startswith("out")
        accounts = list(CHART[company])
        sign = -1 if move_type in ("out_invoice", "in_refund") else 1  # product lines: credit on a sale
        rate = RATES.get((COMPANY_CURRENCY[company], move["currency_id"]), Decimal(1))
        sale_tax, purchase_tax, percent = TAX[company]
        taxed = rng.random() < 0.9
        lines: list[dict[str, Any]] = []
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
            pid, template, label = rng.choice(self.sellable)
            price = money(template["list_price"] * (1 if sale else Decimal("0.6")) / rate)
            quantity = Decimal(rng.choice((1, 1, 2, 3, 5, 10, 12, 20)))
            amount = sign * money(quantity * price)
            lines.append(self.line(move, accounts[2] if sale else accounts[3], partner,
                                   label, money(amount * rate), amount,
                                   display_type="product", product_id=pid, quantity=quantity, price_unit=price))
        untaxed = sum((line["amount_currency"] for line in lines), Decimal(0))
        if taxed:
            tax = money(untaxed * percent / 100)
            lines.append(self.line(move, accounts[4] if sale else accounts[5], partner, f"{percent}%",
                                   money(tax * rate), tax, display_type="tax",
                                   tax_line_id=sale_tax if sale else purchase_tax))
        if rng.random() < 0.03:
            lines.append(self.line(move, None, partner, "Delivered to the loading dock, ask for reception.",
                                   Decimal(0), Decimal(0), display_type="line_note"))
        total_currency = -sum((line["amount_currency"] for line in lines), Decimal(0))
        total = -sum((line["balance"] for line in lines), Decimal(0))
        lines.append(self.line(move, accounts[0] if sale else accounts[1], partner, move["name"] if
                               move["name"] != "/" else None, total, total_currency, display_type="payment_term"))
        direction = 1 if move_type in ("out_invoice", "in_refund") else -1
        untaxed_company = -sum((line["balance"] for line in lines if line["display_type"] == "product"), Decimal(0))
        day = move["date"]
        move.update(invoice_date=day, invoice_date_due=day + timedelta(days=rng.choice((0, 15, 30, 30, 45))),
                    ref=rng.choice((None, None, f"PO{rng.randrange(10**5):05d}")) if sale else
                    f"{rng.choice(('INV', 'F', 'FAC'))}-{rng.randrange(10**6):06d}",
                    amount_untaxed=abs(untaxed), amount_tax=abs(total_currency) - abs(untaxed),
                    amount_total=abs(total_currency), amount_untaxed_signed=direction * abs(untaxed_company),
                    amount_tax_signed=direction * (abs(total) - abs(untaxed_company)),
                    amount_total_signed=direction * abs(total), partner_id=move.get("partner_id", partner))
        return lines

    def line(self, move: dict[str, Any], account: int | None, partner: int | None, label: str | None,
             balance: Decimal, amount_currency: Decimal, **extra: Any) -> dict[str, Any]:
        return {"account_id": account, "partner_id": partner, "name": label, "debit": max(balance, Decimal(0)),
                "credit": max(-balance, Decimal(0)), "balance": balance, "amount_currency": amount_currency,
                "currency_id": move["currency_id"], "company_currency_id": COMPANY_CURRENCY[move["company_id"]],
                "amount_residual": Decimal(0), "reconciled": False, "matching_number": None, "product_id": None,
                "quantity": None, "price_unit": None, "tax_line_id": None, **extra}

    def settle(self, move: dict[str, Any], lines: list[dict[str, Any]], day: date) -> bool:
        """Set the payment state and residuals of an invoice; True when a payment touched it."""
        if move["move_type"] == "entry":
            return False
        term = lines[-1]
        if move["state"] != "posted":
            state = "not_paid"
        else:
            old = (END.date() - day).days > 60
            state = self.rng.choices(("paid", "in_payment", "partial", "not_paid"),
                                     (70, 5, 10, 15) if old else (30, 10, 10, 50))[0]
        if state in ("paid", "in_payment"):
            self.settle_fully(move, term, state, f"A{move['id']}")
            return True
        share = Decimal(1) if state == "not_paid" else Decimal(self.rng.randint(20, 80)) / 100
        move.update(payment_state=state, amount_residual=money(move["amount_total"] * share),
                    amount_residual_signed=money(move["amount_total_signed"] * share))
        term["amount_residual"] = money(term["balance"] * share)
        if state == "partial":
            term["matching_number"] = f"P{move['id']}"
        return state == "partial"

    def settle_fully(self, move: dict[str, Any], term: dict[str, Any], state: str, matching: str) -> None:
        move.update(payment_state=state, amount_residual=Decimal(0), amount_residual_signed=Decimal(0))
        term.update(amount_residual=Decimal(0), reconciled=True, matching_number=matching)

    # -- sales ------------------------------------------------------------------------------------------

    def orders(self, count: int) -> None:
        rng = self.rng
        partners = self.rows["res_partner"]
        customers = [p for p in partners if p["id"] >= 10 and p["commercial_partner_id"] == p["id"]]
        children: dict[tuple[int, str], int] = {(p["parent_id"], p["type"]): p["id"] for p in partners
                                                if p["parent_id"]}
        created = sorted(self.moment(START, END) for _ in range(count))
        pools = {company: [p for p in customers if p["company_id"] in (None, company)] or customers
                 for company in (1, 2, 3)}
        orders = []
        for oid, made in enumerate(created, start=1):
            company = rng.choices((1, 2, 3), (60, 25, 15))[0]
            partner = rng.choice(pools[company])
            state = rng.choices(("draft", "sent", "sale", "cancel"), (15, 10, 65, 10))[0]
            currency = COMPANY_CURRENCY[company]
            untaxed = sum((money(rng.choice(self.sellable)[1]["list_price"] * rng.choice((1, 2, 4, 10)))
                           for _ in range(rng.randint(1, 4))), Decimal(0))
            tax = money(untaxed * TAX[company][2] / 100)
            confirmed = min(END, made + timedelta(seconds=rng.randrange(1, 14 * 86400)))
            order = {"id": oid, "name": f"S{oid:05d}", "state": state,
                     "locked": state == "sale" and rng.random() < 0.2, "company_id": company,
                     "partner_id": partner["id"],
                     "partner_invoice_id": children.get((partner["id"], "invoice"), partner["id"]),
                     "partner_shipping_id": children.get((partner["id"], "delivery"), partner["id"]),
                     "date_order": confirmed if state == "sale" else made, "currency_id": currency,
                     "amount_untaxed": untaxed, "amount_tax": tax, "amount_total": untaxed + tax,
                     "invoice_status": rng.choices(("invoiced", "to invoice", "no", "upselling"), (60, 28, 10, 2))[0]
                     if state == "sale" else "no",
                     "user_id": rng.choice((None,) + SALESPEOPLE if company != 2 else (6, 6, None)),
                     "team_id": 3 if company == 2 else rng.choice((1, 1, 2))}
            written = confirmed if state in ("sale", "cancel") else self.edited(made, 0.3)
            self.stamp(order, made, written, order["user_id"] or 2)
            orders.append(order)
        self.rows["sale_order"] = orders
