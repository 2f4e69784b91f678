"""The Odoo emulator keeps the wire contract (../shared/api-contracts/odoo.md) over real HTTP and real
PostgreSQL: every answer is checked against the tables it was read from."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import psycopg
import pytest

from engine.controlplane.db import Database
from tests.emulators.odoo import schema as odoo_schema
from tests.emulators.harness import EmulatorError, EmulatorProcess
from tests.support.databases import scratch_database, scratch_name

pytestmark = pytest.mark.integration  # every test here talks to an emulator process

DB, LOGIN, PASSWORD, API_KEY, UID = "acme", "admin", "admin-password", "selftest-api-key", 2
SCHEMA = "odoo"
KEYSET = "write_date asc, id asc"


def _start(url: str) -> EmulatorProcess:
    return EmulatorProcess("odoo", "--database-url", url, "--schema", SCHEMA, "--db", DB, "--login", LOGIN,
                           "--password", PASSWORD, "--api-key", API_KEY, "--uid", str(UID))


@pytest.fixture(scope="module")
def shared_url(admin_url: str) -> Iterator[str]:
    """One database for the read-only tests (the `database` fixture is per test; this data is never changed)."""
    with scratch_database(admin_url, name=scratch_name("ipai_test_odoo")) as db:
        with psycopg.connect(db.url) as conn:
            odoo_schema.create(conn, SCHEMA, seed=3)
        yield db.url


@pytest.fixture(scope="module")
def shared(shared_url: str) -> Iterator[EmulatorProcess]:
    with _start(shared_url) as emulator:
        yield emulator


class Odoo:
    """An emulator and one HTTP client for it (a client per call costs an SSL context, ~50 ms)."""

    def __init__(self, emulator: EmulatorProcess, http: httpx.Client) -> None:
        self.emulator, self.http = emulator, http

    def rpc(self, service: str, method: str, *args: Any) -> dict[str, Any]:
        body = {"jsonrpc": "2.0", "method": "call", "id": 7,
                "params": {"service": service, "method": method, "args": list(args)}}
        response = self.http.post("/jsonrpc", json=body)
        assert response.status_code == 200, response.text
        envelope = response.json()
        assert envelope["jsonrpc"] == "2.0" and envelope["id"] == 7
        return envelope

    def call(self, model: str, method: str, *args: Any, password: str = PASSWORD, **kwargs: Any) -> Any:
        """execute_kw; the result, or an AssertionError carrying the error envelope."""
        envelope = self.rpc("object", "execute_kw", DB, UID, password, model, method, list(args), kwargs)
        assert "result" in envelope, envelope
        return envelope["result"]

    def error(self, model: str, method: str, *args: Any, password: str = PASSWORD, **kwargs: Any) -> dict[str, Any]:
        envelope = self.rpc("object", "execute_kw", DB, UID, password, model, method, list(args), kwargs)
        assert "error" in envelope, envelope
        return envelope["error"]

    def keyset_walk(self, model: str, *, page: int) -> list[dict[str, Any]]:
        """Read every record (archived too) in pages on (write_date, id), as odoo.md section 6 prescribes."""
        rows: list[dict[str, Any]] = []
        domain: list[Any] = []
        while True:
            got = self.call(model, "search_read", domain, fields=["write_date"], limit=page, order=KEYSET,
                            context={"active_test": False})
            rows += got
            if len(got) < page:
                return rows
            t, n = got[-1]["write_date"], got[-1]["id"]
            domain = ["|", ["write_date", ">", t], "&", ["write_date", "=", t], ["id", ">", n]]


@contextlib.contextmanager
def connect(emulator: EmulatorProcess) -> Iterator[Odoo]:
    with httpx.Client(base_url=emulator.url, timeout=30) as http:
        yield Odoo(emulator, http)


@pytest.fixture
def odoo(shared: EmulatorProcess) -> Iterator[Odoo]:
    shared.clear_faults()
    shared.clear_log()
    with connect(shared) as client:
        yield client


@pytest.fixture
def pg(shared_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(shared_url, autocommit=True) as conn:
        yield conn


def ids(conn: psycopg.Connection, query: str, params: tuple[Any, ...] = ()) -> list[int]:
    """The first column of `query` ({s} is the schema)."""
    return [r[0] for r in conn.execute(query.replace("{s}", SCHEMA), params or None).fetchall()]


def row(conn: psycopg.Connection, query: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
    """The one row of `query` ({s} is the schema)."""
    found = conn.execute(query.replace("{s}", SCHEMA), params or None).fetchone()
    assert found is not None, query
    return found


# -- auth ---------------------------------------------------------------------------------------------------

def test_authenticate_gives_the_uid_or_false_and_execute_kw_checks_the_password(odoo: Odoo) -> None:
    assert odoo.rpc("common", "version")["result"]["server_version"] == "17.0"
    assert odoo.rpc("common", "authenticate", DB, LOGIN, PASSWORD, {})["result"] == UID
    assert odoo.rpc("common", "authenticate", DB, LOGIN, API_KEY, {})["result"] == UID  # a key is a password
    assert odoo.rpc("common", "authenticate", DB, LOGIN, "wrong", {})["result"] is False
    assert odoo.rpc("common", "login", DB, "someone", PASSWORD)["result"] is False
    assert odoo.rpc("db", "list")["result"] == [DB]
    legacy = odoo.rpc("object", "execute", DB, UID, PASSWORD, "res.partner", "search", [["id", "=", 3]])
    assert legacy["result"] == [3]
    assert odoo.call("res.partner", "search_count", [], password=API_KEY) > 0

    denied = odoo.error("res.partner", "search_read", [], password="wrong", limit=1)
    assert denied["code"] == 200 and denied["message"] == "Odoo Server Error"
    assert denied["data"]["name"] == "odoo.exceptions.AccessDenied"
    assert set(denied["data"]) == {"name", "message", "arguments", "context", "debug"}
    assert "error" in odoo.rpc("common", "authenticate", "otherdb", LOGIN, PASSWORD, {})
    notes = [entry["note"] for entry in odoo.emulator.log()]
    assert "res.partner.search_count" in notes and "AccessDenied" in notes


def test_json2_takes_a_bearer_key_and_answers_with_real_statuses(odoo: Odoo) -> None:
    url = "/json/2/res.partner"
    body = {"domain": [["is_company", "=", True]], "fields": ["name"], "limit": 3, "order": "id asc"}
    missing = odoo.http.post(f"{url}/search_read", json=body)
    assert missing.status_code == 401
    assert missing.json()["name"] == "werkzeug.exceptions.Unauthorized"
    assert missing.json()["message"] == "Invalid apikey"
    wrong = odoo.http.post(f"{url}/search_read", json=body, headers={"Authorization": "bearer nope"})
    assert wrong.status_code == 401

    ok = odoo.http.post(f"{url}/search_read", json=body,
                        headers={"Authorization": f"BEARER {API_KEY}", "X-Odoo-Database": DB})
    assert ok.status_code == 200
    assert [set(r) for r in ok.json()] == [{"id", "name"}] * 3  # raw result, no envelope

    auth = {"Authorization": f"bearer {API_KEY}"}
    read = odoo.http.post(f"{url}/read", json={"ids": [3, 999_999, 1], "fields": ["name"]}, headers=auth)
    assert read.json() == [{"id": 3, "name": "Mitchell Admin"}, {"id": 1, "name": "Acme Corporation"}]
    wrong_db = odoo.http.post(f"{url}/search_read", json=body, headers={**auth, "X-Odoo-Database": "other"})
    assert wrong_db.status_code == 404
    bad_kwarg = odoo.http.post(f"{url}/search_read", json={"badparameter": 1}, headers=auth)
    assert bad_kwarg.status_code == 422 and "badparameter" in bad_kwarg.json()["message"]
    unknown = odoo.http.post("/json/2/res.nothing/search_read", json={}, headers=auth)
    assert unknown.status_code == 404


def test_web_session_cookie_works_until_sessions_expire(odoo: Odoo) -> None:
    with httpx.Client(base_url=odoo.emulator.url, timeout=30) as http:
        bad = http.post("/web/session/authenticate", json={"jsonrpc": "2.0", "id": 1, "params": {
            "db": DB, "login": LOGIN, "password": "wrong"}}).json()
        assert bad["error"]["data"]["name"] == "odoo.exceptions.AccessDenied"
        good = http.post("/web/session/authenticate", json={"jsonrpc": "2.0", "id": 1, "params": {
            "db": DB, "login": LOGIN, "password": PASSWORD}})
        info = good.json()["result"]
        assert info["uid"] == UID and info["db"] == DB and info["user_context"]["lang"] == "en_US"
        assert "httponly" in good.headers["set-cookie"].lower() and http.cookies.get("session_id")

        params = {"model": "res.partner", "method": "search_read", "args": [[["id", "=", 3]]],
                  "kwargs": {"fields": ["name"], "context": {}}}
        for path in ("/web/dataset/call_kw", "/web/dataset/call_kw/res.partner/search_read"):
            answer = http.post(path, json={"jsonrpc": "2.0", "method": "call", "id": 2, "params": params}).json()
            assert answer["result"] == [{"id": 3, "name": "Mitchell Admin"}]

        assert odoo.emulator.admin("POST", "/_emulator/odoo/sessions/expire")["expired"] >= 1
        expired = http.post("/web/dataset/call_kw", json={"jsonrpc": "2.0", "id": 3, "params": params}).json()
        assert expired["error"]["code"] == 100 and expired["error"]["message"] == "Odoo Session Expired"
    anonymous = odoo.http.post("/web/dataset/call_kw", json={"jsonrpc": "2.0", "id": 4, "params": params})
    assert anonymous.json()["error"]["code"] == 100


# -- reading ------------------------------------------------------------------------------------------------

def test_keyset_domain_returns_exactly_the_rows_after_the_cursor(odoo: Odoo, pg: psycopg.Connection) -> None:
    t = row(pg, "select write_date from {s}.res_partner group by 1 order by count(*) desc limit 1")[0]  # a tie
    tie = ids(pg, "select id from {s}.res_partner where write_date = %s order by id", (t,))
    n = tie[len(tie) // 2]
    domain = ["|", ["write_date", ">", f"{t:%Y-%m-%d %H:%M:%S}"], "&",
              ["write_date", "=", f"{t:%Y-%m-%d %H:%M:%S}"], ["id", ">", n]]
    got = odoo.call("res.partner", "search_read", domain, fields=["write_date"], order=KEYSET, limit=1000,
                    context={"active_test": False})
    assert [r["id"] for r in got] == ids(pg, "select id from {s}.res_partner where write_date > %s or "
                                             "(write_date = %s and id > %s) order by write_date, id", (t, t, n))
    visible = odoo.call("res.partner", "search_read", domain, fields=["id"], order=KEYSET, limit=1000)
    assert [r["id"] for r in visible] == ids(pg, "select id from {s}.res_partner where (write_date > %s or "
                                                 "(write_date = %s and id > %s)) and active order by write_date, id",
                                             (t, t, n))

    walked = odoo.keyset_walk("account.move.line", page=97)
    assert [r["id"] for r in walked] == ids(pg, "select id from {s}.account_move_line order by write_date, id")
    searched = odoo.emulator.log()[-1]["body"]["params"]["args"]
    assert searched[3:5] == ["account.move.line", "search_read"] and searched[6]["limit"] == 97


def test_values_are_typed_as_on_the_wire(odoo: Odoo, pg: psycopg.Connection) -> None:
    contact = odoo.call("res.partner", "search_read", [["parent_id", "!=", False], ["type", "=", "delivery"]],
                        fields=["name", "email", "parent_id", "company_id", "write_date", "customer_rank"],
                        limit=1)[0]
    assert contact["name"] is False and contact["email"] is False  # a nameless delivery address
    assert contact["company_id"] is False or isinstance(contact["company_id"], list)
    parent = row(pg, "select complete_name from {s}.res_partner where id = %s", (contact["parent_id"][0],))
    assert contact["parent_id"][1] == parent[0]
    assert len(contact["write_date"]) == 19 and contact["write_date"][10] == " "  # UTC, no zone suffix
    assert isinstance(contact["customer_rank"], int)

    move = odoo.call("account.move", "search_read", [["move_type", "=", "out_invoice"], ["state", "=", "posted"]],
                     fields=["name", "invoice_date", "amount_total", "partner_id", "line_ids", "reversed_entry_id"],
                     order="id asc", limit=1)[0]
    truth = row(pg, "select invoice_date, amount_total from {s}.account_move where id = %s", (move["id"],))
    assert move["invoice_date"] == truth[0].isoformat() and move["amount_total"] == float(truth[1])
    assert move["line_ids"] == ids(pg, "select id from {s}.account_move_line where move_id = %s order by id",
                                   (move["id"],))
    assert move["reversed_entry_id"] is False and isinstance(move["partner_id"][1], str)

    lines = odoo.call("account.move.line", "read", move["line_ids"], ["debit", "credit", "product_id"])
    assert sum(line["debit"] for line in lines) == pytest.approx(sum(line["credit"] for line in lines))
    assert all(set(line) == {"id", "debit", "credit", "product_id"} for line in lines)

    default = odoo.call("account.move", "search_read", [], fields=["id"], limit=20)  # `_order`, odoo.md section 5
    assert [r["id"] for r in default] == ids(pg, "select id from {s}.account_move order by date desc, name desc, "
                                                 "invoice_date desc, id desc limit 20")
    assert odoo.call("product.product", "fields_get", attributes=["type"])["company_id"] == {"type": "many2one"}


def test_active_test_hides_archived_records_unless_asked(odoo: Odoo, pg: psycopg.Connection) -> None:
    total, active = row(pg, "select count(*), count(*) filter (where active) from {s}.res_partner")
    assert active < total
    assert odoo.call("res.partner", "search_count", []) == active
    assert odoo.call("res.partner", "search_count", [], context={"active_test": False}) == total
    assert odoo.call("res.partner", "search_count", [["active", "in", [True, False]]]) == total
    assert odoo.call("res.partner", "search", [["active", "=", False]]) == \
        ids(pg, "select id from {s}.res_partner where not active order by complete_name, id desc")
    assert 2 not in odoo.call("res.partner", "search", [])  # OdooBot is archived
    moves = row(pg, "select count(*) from {s}.account_move")[0]
    assert odoo.call("account.move", "search_count", []) == moves  # no active field: nothing hidden


def test_translated_fields_follow_the_context_lang(odoo: Odoo, pg: psycopg.Connection) -> None:
    both, only_en = row(pg, "select (select id from {s}.product_template where name ? 'fr_FR' order by id limit 1),"
                            " (select id from {s}.product_template where not name ? 'fr_FR' order by id limit 1)")
    names: dict[str, list[tuple[str, str]]] = {}
    for lang in ("en_US", "fr_FR", "de_DE"):
        rows = odoo.call("product.template", "read", [both, only_en], ["name", "uom_id"], context={"lang": lang})
        assert [r["id"] for r in rows] == [both, only_en]
        names[lang] = [(r["name"], r["uom_id"][1]) for r in rows]
    stored = pg.execute(f"select name from {SCHEMA}.product_template where id = any(%s) order by id",
                        ([both, only_en],)).fetchall()  # the JSONB translations
    assert [n for n, _ in names["en_US"]] == [stored[0][0]["en_US"], stored[1][0]["en_US"]]
    assert [n for n, _ in names["fr_FR"]] == [stored[0][0]["fr_FR"], stored[1][0]["en_US"]]  # en_US fallback
    assert names["de_DE"] == names["en_US"]
    assert names["fr_FR"][0][1] in ("Unités", "Heures", "Douzaines")

    variant = odoo.call("product.product", "search_read", [["product_tmpl_id", "=", both]],
                        fields=["name", "company_id", "display_name"],
                        context={"lang": "fr_FR", "active_test": False}, limit=1)[0]
    assert variant["name"] == stored[0][0]["fr_FR"] and variant["display_name"].endswith(variant["name"])
    french = odoo.call("product.template", "search", [["name", "ilike", stored[0][0]["fr_FR"]]],
                       context={"lang": "fr_FR", "active_test": False})
    assert both in french


@pytest.mark.parametrize(("domain", "where"), [
    ([["email", "!=", "info@lumen-systems.be"]], "email is distinct from 'info@lumen-systems.be'"),
    ([["vat", "=", False]], "vat is null"),
    ([["customer_rank", "not in", [0, 1]]], "customer_rank not in (0, 1)"),
    (["!", ["is_company", "=", True]], "not is_company"),
    ([["name", "=ilike", "a%"]], "name ilike 'a%'"),
    ([["email", "like", "@example."]], "email like '%@example.%'"),
    (["|", ["type", "=", "invoice"], ["type", "=", "delivery"], ["city", "in", ["Paris", "Lyon"]]],
     "type in ('invoice', 'delivery') and city in ('Paris', 'Lyon')"),
    ([["parent_id.is_company", "=", True], ["parent_id", "ilike", "a"]],
     "parent_id in (select id from {s}.res_partner where is_company and complete_name ilike '%a%')"),
    ([["create_date", "<=", "2024-06-01"], ["supplier_rank", ">", 0]],
     "create_date <= '2024-06-01' and supplier_rank > 0"),
])
def test_domains_select_what_sql_selects(odoo: Odoo, pg: psycopg.Connection, domain: list[Any],
                                         where: str) -> None:
    got = odoo.call("res.partner", "search", domain, order="id", context={"active_test": False})
    assert got == ids(pg, f"select id from {{s}}.res_partner where {where} order by id")


def test_unknown_models_fields_and_faults(odoo: Odoo) -> None:
    assert odoo.error("res.nothing", "search_read", [])["data"]["message"] == "Object res.nothing doesn't exist"
    assert odoo.error("res.partner", "search_read", [["nope", "=", 1]])["data"]["name"] == "builtins.ValueError"
    assert "nope" in odoo.error("res.partner", "read", [1], ["nope"])["data"]["message"]
    assert odoo.error("res.partner", "search_read", [], order="name; drop table x")["data"]["name"] == \
        "odoo.exceptions.UserError"
    assert odoo.error("res.partner", "unlink", [1])["data"]["name"] == "builtins.AttributeError"

    odoo.emulator.set_faults(errors_5xx={"every": 1, "count": 1, "status": 502})
    assert odoo.http.post("/jsonrpc", json={"params": {}}).status_code == 502
    assert odoo.rpc("common", "version")["result"]["server_serie"] == "17.0"
    odoo.emulator.set_faults(storm={"every": 1, "count": 1, "status": 429, "retry_after": 0})
    assert odoo.http.post("/jsonrpc", json={"params": {}}).status_code == 429


# -- changes between pages (a database of its own) ---------------------------------------------------------

def test_writes_between_pages_lose_rows_to_offset_paging_but_not_to_keyset(database: Database) -> None:
    with psycopg.connect(database.url, autocommit=True) as conn:
        odoo_schema.create(conn, SCHEMA, partners=120, moves=20, orders=10, products=10)
        odoo_schema.set_write_date(conn, "res_partner", list(range(20, 60)), datetime(2025, 1, 1, 12), schema=SCHEMA)
        with _start(database.url) as emulator, connect(emulator) as odoo:
            emulator.set_faults(page_write={"every": 2, "times": 3, "count": 4})
            offset_ids: list[int] = []
            while True:
                page = odoo.call("res.partner", "search_read", [], fields=["id"], order=KEYSET,
                                 offset=len(offset_ids), limit=25, context={"active_test": False})
                offset_ids += [r["id"] for r in page]
                if len(page) < 25:
                    break
            everyone = set(ids(conn, "select id from {s}.res_partner"))
            assert everyone - set(offset_ids), "touched rows shift later pages: offset paging skips some"

            emulator.set_faults(page_write={"every": 2, "times": 3, "count": 4, "action": "insert"})
            walked = {r["id"] for r in odoo.keyset_walk("res.partner", page=25)}
            emulator.set_faults(page_write={"every": 3, "times": 2, "count": 4, "action": "touch"})
            walked |= {r["id"] for r in odoo.keyset_walk("res.partner", page=25)}
            assert walked == set(ids(conn, "select id from {s}.res_partner")) > everyone
            assert any(e["note"] == "res.partner.search_read" for e in emulator.log())

            at = "2030-01-02 03:04:05"
            first, second = ids(conn, "select id from {s}.res_partner where active and id >= 10 order by id limit 2")
            touched = emulator.admin("POST", "/_emulator/odoo/touch",
                                     json={"model": "res.partner", "ids": [first, second], "at": at})
            assert touched["touched"] == [first, second]
            new = emulator.admin("POST", "/_emulator/odoo/insert", json={"count": 2, "at": at})["ids"]
            emulator.admin("POST", "/_emulator/odoo/archive", json={"model": "res.partner", "ids": [second], "at": at})
            emulator.admin("POST", "/_emulator/odoo/delete", json={"model": "account.move", "ids": [1]})
            changed = odoo.call("res.partner", "search_read", [["write_date", ">=", at]], fields=["write_date"],
                                order=KEYSET)
            assert [r["id"] for r in changed] == [first, *new]  # `second` is archived, so hidden
            assert {r["write_date"] for r in changed} == {at}
            assert odoo.call("account.move", "search", [["id", "=", 1]]) == []
            assert ids(conn, "select id from {s}.account_move_line where move_id = 1") == []  # unlink cascades
            with pytest.raises(EmulatorError, match="Odoo would refuse"):
                emulator.admin("POST", "/_emulator/odoo/delete", json={"model": "res.company", "ids": [1]})
