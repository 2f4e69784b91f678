"""The fixed part of the Odoo data: its time frame, the reference rows Odoo and its setup create, word lists.

3 companies (the third a branch of the first, `parent_id`), USD/EUR/GBP (GBP archived), users, a chart of
accounts per company (French codes for the French one), journals, taxes, sales teams, product categories and
units, all with fixed ids; and the names, places and products odoo_data.py draws generated rows from.
"""

from __future__ import annotations

import json
import unicodedata
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

START = datetime(2024, 1, 1, 8, 0, 0)
END = datetime(2025, 6, 30, 18, 0, 0)
IMPORT = datetime(2024, 1, 2, 8, 15, 0)
"""The initial data import: one transaction, so every partner it created shares this create/write date."""
RECOMPUTE = datetime(2025, 7, 1, 2, 0, 0)
"""A nightly cron (run as OdooBot, uid 1) that rewrote a slice of every table in one transaction."""


EUR, USD, GBP = 1, 2, 3
RATES = {(USD, EUR): Decimal("1.0850"), (EUR, USD): Decimal("0.9200")}  # company units per foreign unit
COMPANY_CURRENCY = {1: USD, 2: EUR, 3: USD}
CHART = {1: range(1, 8), 2: range(8, 15), 3: range(1, 8)}  # a branch posts with its parent's chart (unconfirmed)
JOURNALS = {1: {"sale": 1, "purchase": 2, "general": 3}, 2: {"sale": 5, "purchase": 6, "general": 7}}
JOURNALS[3] = JOURNALS[1]
TAX = {1: (1, 2, 15), 2: (3, 4, 20), 3: (1, 2, 15)}  # sale tax id, purchase tax id, percent
SALESPEOPLE = (3, 4, 5, 6)
FIRST = ("Emma", "Liam", "Olivia", "Noah", "Ava", "Lucas", "Chloé", "Hugo", "Léa", "Louis", "Zoë", "Mia", "Jonas",
         "Sofia", "Élodie", "Mathis", "Anaïs", "Jürgen", "Lukas", "Hannah", "Pieter", "Fien", "Daan", "Grace",
         "Ethan", "Nora", "Marta", "José", "Aurélien", "Björn")
LAST = ("Smith", "Johnson", "Brown", "Garcia", "Martin", "Bernard", "Dubois", "Lefèvre", "Moreau", "Müller",
        "Schmidt", "Schneider", "Peeters", "Janssens", "Maes", "Willems", "O'Brien", "Nguyen", "Lambert",
        "Fontaine", "Wagner", "Becker", "Rousseau", "Clark", "Lewis", "Walker", "Dupont", "Van den Berg",
        "Łukasiewicz", "Kowalski")
BRAND = ("Blue Harbor", "Northwind", "Silver Oak", "Redwood", "Bright Peak", "Deco", "Lumen", "Granite", "Atlas",
         "Cedar", "Maple", "Orion", "Vertex", "Nimbus", "Sunrise", "Kestrel", "Evergreen", "Quartz",
         "Bonne Mine", "Crème & Co", "Les Ateliers", "Château Vert", "Zuiderzee", "Alpenblick")
TRADE = ("Logistics", "Interiors", "Consulting", "Supplies", "Design", "Builders", "Trading", "Furniture",
         "Systems", "Studio", "Partners", "Foods")
COUNTRIES = (  # country, weight, legal suffixes, lang, top-level domain, cities
    ("US", 45, ("Inc.", "LLC", "Corp."), "en_US", "com", (("San Francisco", "94107"), ("Austin", "78701"),
                                                        ("Chicago", "60601"), ("Boston", "02110"))),
    ("FR", 25, ("SARL", "SAS", "SA"), "fr_FR", "fr", (("Paris", "75002"), ("Lyon", "69002"), ("Lille", "59000"))),
    ("BE", 15, ("SRL", "NV", "BV"), "nl_BE", "be", (("Brussels", "1000"), ("Antwerp", "2000"), ("Ghent", "9000"))),
    ("DE", 15, ("GmbH", "AG"), "de_DE", "de", (("Berlin", "10115"), ("Munich", "80331"), ("Hamburg", "20095"))),
)
STREETS = ("Main Street", "Rue de la Paix", "Avenue Louise", "Hauptstraße", "Market Street", "Rue du Commerce",
           "Kerkstraat", "Lindenallee", "Oak Avenue", "Quai des Chartrons")
PRODUCTS = (  # en_US, fr_FR (None: only en_US), base price, kind
    ("Office Chair", "Chaise de bureau", 189, "goods"), ("Standing Desk", "Bureau assis-debout", 649, "goods"),
    ("Desk Lamp", "Lampe de bureau", 45, "goods"), ("Conference Table", "Table de conférence", 1290, "goods"),
    ("Bookshelf", "Étagère", 159, "goods"), ("Filing Cabinet", "Classeur à tiroirs", 239, "goods"),
    ("Monitor Stand", None, 59, "goods"), ("Whiteboard", "Tableau blanc", 119, "goods"),
    ("Ergonomic Keyboard", "Clavier ergonomique", 89, "goods"), ("Wireless Mouse", "Souris sans fil", 29, "goods"),
    ("Acoustic Panel", None, 75, "goods"), ("Cable Tray", None, 18, "dozen"),
    ("Coat Rack", "Porte-manteau", 65, "goods"), ("Drawer Unit", "Caisson", 199, "goods"),
    ("Footrest", "Repose-pieds", 39, "goods"), ("Meeting Pod", None, 4900, "goods"),
    ("Installation Service", "Service d'installation", 120, "service"),
    ("Consulting Hour", "Heure de conseil", 95, "hours"),
    ("Annual Maintenance", "Maintenance annuelle", 450, "service"),
    ("Delivery Fee", "Frais de livraison", 25, "service"),
)
SERIES = ("", "Pro", "Compact", "XL", "Eco", "Mk II", "Plus", "Studio")
VARIANTS = (("Black", "Noir"), ("White", "Blanc"), ("Oak", "Chêne"), ("Walnut", "Noyer"))


def i18n(en: str, fr: str | None = None) -> str:
    return json.dumps({"en_US": en, "fr_FR": fr} if fr else {"en_US": en}, ensure_ascii=False)


def reference_rows() -> dict[str, list[dict[str, Any]]]:
    """Currencies, companies, users, charts, journals, taxes, teams, categories and units (fixed ids)."""
    c = "create_date"
    rows: dict[str, list[dict[str, Any]]] = {
        "res_currency": [
            {"id": 1, "name": "EUR", "full_name": "Euro", "symbol": "€", "rounding": Decimal("0.01"),
             "position": "after", "active": True},
            {"id": 2, "name": "USD", "full_name": "United States dollar", "symbol": "$",
             "rounding": Decimal("0.01"), "position": "before", "active": True},
            {"id": 3, "name": "GBP", "full_name": "Pound sterling", "symbol": "£", "rounding": Decimal("0.01"),
             "position": "before", "active": False}],
        "res_company": [
            {"id": 1, "name": "Acme Corporation", "partner_id": 1, "currency_id": USD, "parent_id": None,
             "parent_path": "1/", "active": True, "sequence": 0, "email": "info@acme-corp.com",
             "phone": "+1 415-555-0100"},
            {"id": 2, "name": "Acme France SAS", "partner_id": 4, "currency_id": EUR, "parent_id": None,
             "parent_path": "2/", "active": True, "sequence": 10, "email": "contact@acme-corp.fr",
             "phone": "+33 1 84 88 00 00"},
            {"id": 3, "name": "Acme Corporation (West)", "partner_id": 5, "currency_id": USD, "parent_id": 1,
             "parent_path": "1/3/", "active": True, "sequence": 5, "email": "west@acme-corp.com",
             "phone": None}],
        "res_users": [
            {"id": uid, "login": login, "partner_id": pid, "company_id": 1 if uid != 6 else 2,
             "active": uid != 1, "share": False}
            for uid, login, pid in ((1, "__system__", 2), (2, "admin", 3), (3, "marc.demo@acme-corp.com", 6),
                                    (4, "sophie.martin@acme-corp.com", 7), (5, "john.miller@acme-corp.com", 8),
                                    (6, "lea.dubois@acme-corp.fr", 9))],
        "product_category": [
            {"id": i, "name": n, "complete_name": cn, "parent_id": p, "parent_path": pp}
            for i, n, cn, p, pp in ((1, "All", "All", None, "1/"), (2, "Saleable", "All / Saleable", 1, "1/2/"),
                                    (3, "Expenses", "All / Expenses", 1, "1/3/"),
                                    (4, "Office Furniture", "All / Saleable / Office Furniture", 2, "1/2/4/"),
                                    (5, "Services", "All / Saleable / Services", 2, "1/2/5/"))],
        "uom_uom": [
            {"id": 1, "name": i18n("Units", "Unités"), "factor": Decimal(1), "rounding": Decimal("0.01"),
             "uom_type": "reference", "active": True},
            {"id": 2, "name": i18n("Dozens", "Douzaines"), "factor": Decimal("0.08333333"),
             "rounding": Decimal("0.01"), "uom_type": "bigger", "active": True},
            {"id": 3, "name": i18n("kg"), "factor": Decimal(1), "rounding": Decimal("0.01"), "uom_type": "reference",
             "active": True},
            {"id": 4, "name": i18n("Hours", "Heures"), "factor": Decimal(1), "rounding": Decimal("0.01"),
             "uom_type": "reference", "active": True}],
        "crm_team": [
            {"id": 1, "name": i18n("Sales", "Ventes"), "company_id": 1, "sequence": 10, "user_id": 3, "active": True},
            {"id": 2, "name": i18n("Website"), "company_id": 1, "sequence": 20, "user_id": None, "active": True},
            {"id": 3, "name": i18n("France Sales", "Ventes France"), "company_id": 2, "sequence": 10, "user_id": 6,
             "active": True}],
    }
    chart = (("121000", "411000", "Account Receivable", "Clients", "asset_receivable", True),
             ("211000", "401000", "Account Payable", "Fournisseurs", "liability_payable", True),
             ("400000", "707000", "Product Sales", "Ventes de marchandises", "income", False),
             ("600000", "607000", "Purchases of Goods", "Achats de marchandises", "expense", False),
             ("251000", "445710", "Tax Received", "TVA collectée", "liability_current", False),
             ("131000", "445660", "Tax Paid", "TVA déductible", "asset_current", False),
             ("101401", "512001", "Bank", "Banque", "asset_cash", False))
    rows["account_account"] = [
        {"id": base + i + 1, "code": code, "name": i18n(en, fr), "account_type": kind, "reconcile": rec,
         "company_id": company}
        for company, base, french in ((1, 0, False), (2, 7, True))
        for i, (us_code, fr_code, en, fr, kind, rec) in enumerate(chart)
        for code in (fr_code if french else us_code,)]
    journals = (("INV", "Customer Invoices", "Factures clients", "sale", 5),
                ("BILL", "Vendor Bills", "Factures fournisseurs", "purchase", 6),
                ("MISC", "Miscellaneous Operations", "Opérations diverses", "general", 9),
                ("BNK1", "Bank", "Banque", "bank", 10))
    rows["account_journal"] = [
        {"id": base + i + 1, "name": i18n(en, fr), "code": code, "type": kind, "company_id": company,
         "sequence": seq, "active": True}
        for company, base in ((1, 0), (2, 4)) for i, (code, en, fr, kind, seq) in enumerate(journals)]
    rows["account_tax"] = [
        {"id": 1, "name": i18n("15%"), "amount": Decimal(15), "type_tax_use": "sale", "company_id": 1},
        {"id": 2, "name": i18n("15%"), "amount": Decimal(15), "type_tax_use": "purchase", "company_id": 1},
        {"id": 3, "name": i18n("20% G", "TVA 20%"), "amount": Decimal(20), "type_tax_use": "sale", "company_id": 2},
        {"id": 4, "name": i18n("20% G", "TVA 20% (achats)"), "amount": Decimal(20), "type_tax_use": "purchase",
         "company_id": 2}]
    for i, tax in enumerate(rows["account_tax"]):
        tax.update(sequence=i + 1, active=True)
    for table_rows in rows.values():
        for row in table_rows:
            row.update({"create_uid": 1, c: START - timedelta(days=2), "write_uid": 1,
                        "write_date": START - timedelta(days=2)})
    return rows


# -- helpers for generated values ---------------------------------------------------------------------

def ascii_fold(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text.replace("Ł", "L").replace("ł", "l"))
    return "".join(ch for ch in folded.encode("ascii", "ignore").decode().lower() if ch.isalnum())


def ean13(number: int) -> str:
    digits = f"{number:012d}"
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(digits))
    return digits + str((10 - total % 10) % 10)


def money(value: Decimal | float) -> Decimal:
    return Decimal(value).quantize(Decimal("0.01"))
