"""The Odoo connector: straight from an Odoo-shaped PostgreSQL, and over the Odoo emulator's /jsonrpc, web
session and /json/2 on loopback, into real bronze Delta + Postgres on Ray.

Direct reads: full then incremental with rows touched between runs and a write_date that ties with the
upper bound, the company filter, translated names. API reads: the same rows as the direct reads (the
emulator serves the same tables), with a password, an API key, a web session that expires and a bearer
key; records written between pages are not lost; bad credentials fail at once with what to do.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from engine.core.errors import RunFailed, SpecError
from connectors.specload import parse_spec
from connectors.odoo.api import shift
from tests.emulators.odoo import schema as odoo_schema
from tests.emulators.harness import EmulatorProcess
from tests.support.syncing import sync
from layers.addressing import Address
from tests.support.truth import assert_exactly_once_per_extraction, bronze_delta, bronze_postgres

pytestmark = pytest.mark.usefixtures("ray_cluster")

DB, LOGIN, PASSWORD, API_KEY = "acme", "admin", "pw-canary-7d1e4b", "key-canary-93a0c5f1"
ALL = ("res_company", "res_partner", "product_template", "product_product", "account_move", "account_move_line",
       "sale_order")


def spec(name: str, source: str, *, streams: tuple[str, ...] = ALL, mode: str = "incremental") -> str:
    listed = "".join(f"  - {{name: {s}}}\n" for s in streams)
    return f"name: {name}\nsource_type: odoo\nsync_mode: {mode}\nsource:\n{source}streams:\n{listed}"


def direct(url: str, extra: str = "") -> str:
    return f"  mode: postgres\n  url: {url}\n  partition_rows: 50\n{extra}"


def api(url: str, auth: str, extra: str = "") -> str:
    return (f"  base_url: {url}\n  database: {DB}\n  page_size: 20\n  partition_rows: 60\n"
            f"  rate_limit: {{requests_per_second: 500, burst: 50}}\n{auth}{extra}")


JSONRPC_KEY = f"  mode: jsonrpc\n  login: {LOGIN}\n  api_key: {{secret: odoo_key}}\n"
JSONRPC_PASSWORD = f"  mode: jsonrpc\n  login: {LOGIN}\n  password: {{secret: odoo_password}}\n"
SESSION = f"  mode: jsonrpc\n  login: {LOGIN}\n  password: {{secret: odoo_password}}\n  session: true\n"
JSON2 = "  mode: json2\n  api_key: {secret: odoo_key}\n"


@pytest.fixture
def odoo_db(source_database: Any) -> Any:
    """A small Odoo database (about 130 partners, 60 moves, 40 orders, 20 product templates), beside the control
    plane's (a source may not read the control-plane database as the platform)."""
    with psycopg.connect(source_database.url) as conn:
        odoo_schema.create(conn, "public", partners=120, moves=60, orders=40, products=20, seed=5)
    return source_database


@pytest.fixture
def emulator(odoo_db: Any, vault: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorProcess]:
    monkeypatch.setenv("IPAI_DEV_MODE", "1")
    vault.set("odoo_password", PASSWORD)
    vault.set("odoo_key", API_KEY)
    with EmulatorProcess("odoo", "--database-url", odoo_db.url, "--db", DB, "--login", LOGIN,
                         "--password", PASSWORD, "--api-key", API_KEY) as e:
        yield e


def source(database: Any, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(database.url) as conn:
        return conn.execute(sql, params).fetchall()


def bronze(settings: Any, name: str, stream: str) -> pa.Table:
    """Delta bronze of `stream` of the instance `name` (env dev, as every spec here)."""
    at = Address("local", "dev", name)
    return bronze_delta(at.delta_uri(settings.lakehouse_uri, "bronze", at.bronze_table(stream)))


def bronze_in_postgres(database: Any, name: str, stream: str) -> pa.Table:
    """Postgres bronze of `stream` of the instance `name` (env dev): `bronze_dev.raw_<name>_<stream>`."""
    at = Address("local", "dev", name)
    return bronze_postgres(database.url, f"{at.schema('bronze')}.{at.bronze_table(stream)}")


def of_run(table: pa.Table, run_id: str) -> pa.Table:
    return table.filter(pc.equal(table.column("_ipai_run_id"), run_id))


def ids(table: pa.Table) -> list[int]:
    return sorted(table.column("id").to_pylist())


# -- mode: postgres ---------------------------------------------------------------------------------------


def test_direct_full_then_incremental_with_a_write_date_tie_across_the_bound(odoo_db, settings, database):
    text = spec("erp", direct(odoo_db.url, "  lookback_s: 60\n"), streams=("res_partner", "account_move_line"))
    first = sync(settings, database, text)
    partners = bronze(settings, "erp", "res_partner")
    assert ids(partners) == [r[0] for r in source(odoo_db, "select id from res_partner order by id")]
    assert first.partitions >= 3 + 3, "id ranges of about 50 rows"
    assert partners.schema.field("write_date").type == pa.timestamp("us", tz="UTC")  # naive UTC in Odoo
    assert partners.schema.field("customer_rank").type == pa.int32()
    lines = bronze(settings, "erp", "account_move_line")
    assert lines.schema.field("balance").type == pa.decimal128(38, 10)  # unconstrained numeric
    assert ids(lines) == [r[0] for r in source(odoo_db, "select id from account_move_line order by id")]
    bound = max(partners.column("write_date").to_pylist())
    cursor = next(t.cursor for t in first.tables if t.stream == "res_partner")
    assert cursor == bound.replace(tzinfo=None).isoformat(timespec="microseconds")

    # Between runs: two partners are edited, and a transaction that began at the bound commits late: its
    # row carries write_date == the bound, which the first run's window (.., bound] could not see.
    with psycopg.connect(odoo_db.url) as conn:
        odoo_schema.touch(conn, "res_partner", [12, 13])
        late = source(odoo_db, "select min(id) from res_partner where write_date < %s", (bound.replace(tzinfo=None),))
        odoo_schema.set_write_date(conn, "res_partner", [late[0][0]], bound)
    second = sync(settings, database, text)
    got = of_run(bronze(settings, "erp", "res_partner"), second.run_id)
    lookback = bound.replace(tzinfo=None) - timedelta(seconds=60)
    expected = [r[0] for r in source(odoo_db, "select id from res_partner where write_date > %s order by id",
                                     (lookback,))]
    assert ids(got) == expected and {12, 13, late[0][0]} <= set(expected)
    rank = source(odoo_db, "select customer_rank from res_partner where id = 12")[0][0]
    assert got.filter(pc.equal(got.column("id"), 12)).column("customer_rank").to_pylist() == [rank]
    for stream in ("res_partner", "account_move_line"):
        assert_exactly_once_per_extraction(bronze_in_postgres(database, "erp", stream), ("id",))


def test_direct_company_filter_and_translated_names(odoo_db, settings, database):
    text = spec("fr", direct(odoo_db.url, "  companies: [2]\n  lang: fr_FR\n"), mode="full",
                streams=("res_company", "res_partner", "product_template", "product_product"))
    sync(settings, database, text)
    assert ids(bronze(settings, "fr", "res_company")) == [2]
    shared_or_2 = "select id from {} where company_id = 2 or company_id is null order by id"
    for stream in ("res_partner", "product_template"):
        assert ids(bronze(settings, "fr", stream)) == [r[0] for r in source(odoo_db, shared_or_2.format(stream))]
    templates = bronze(settings, "fr", "product_template").to_pylist()
    truth = {i: (n, d) for i, n, d in source(odoo_db, "select id, name, description_sale from product_template")}
    for row in templates:
        names, descriptions = truth[row["id"]]
        assert row["name"] == names.get("fr_FR", names["en_US"])  # French, else English
        assert json.loads(row["name_translations"]) == names
        assert json.loads(row["description_sale_translations"] or "null") == descriptions
    assert any(r["name"] != json.loads(r["name_translations"])["en_US"] for r in templates)
    assert any("fr_FR" not in json.loads(r["name_translations"]) for r in templates)
    variants = bronze(settings, "fr", "product_product").to_pylist()
    by_template = {r["id"]: r["name"] for r in templates}
    assert variants and all(v["name"] == by_template[v["product_tmpl_id"]] for v in variants)
    assert ids(bronze(settings, "fr", "product_product")) == [r[0] for r in source(
        odoo_db, "select p.id from product_product p join product_template t on t.id = p.product_tmpl_id"
                  " where t.company_id = 2 or t.company_id is null order by p.id")]


# -- API modes ----------------------------------------------------------------------------------------------


def comparable(direct_table: pa.Table, via_api: pa.Table) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    """Both tables' rows on the columns they share, with the API's typing of empty values (s.4): an empty
    number reads 0, an empty boolean false, an empty char false (null); decimals as floats."""
    names = [n for n in direct_table.column_names if n in via_api.column_names and not n.startswith("_ipai")]
    kinds = {n: via_api.schema.field(n).type for n in names}
    zero = {n for n, t in kinds.items() if (pa.types.is_floating(t) or pa.types.is_integer(t))
            and f"{n}_name" not in via_api.column_names and n != "id"}

    def norm(name: str, v: Any) -> Any:
        if isinstance(v, Decimal):
            v = float(v)
        if isinstance(v, datetime):
            return v.replace(microsecond=0)  # the wire shows whole seconds (s.4)
        if v is None and name in zero:
            return 0.0
        if v is None and pa.types.is_boolean(kinds[name]):
            return False
        return None if v == "" else v

    def rows(table: pa.Table) -> set[tuple[Any, ...]]:
        return {tuple(norm(n, r[n]) for n in names) for r in table.select(names).to_pylist()}

    return rows(direct_table), rows(via_api)


COMPARED = ("res_company", "res_partner", "product_product", "account_move_line")
"""Filtered on id, booleans and archived rows, `_inherits`, numbers and many2one names (every stream is
compared the same way; four keep the test fast)."""


def execute_kw(entry: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """The domain and keyword arguments of a logged /jsonrpc `execute_kw` call."""
    args = (entry.get("body") or {}).get("params", {}).get("args") or []
    return (args[5][0] if len(args) > 6 and args[5] else []), (args[6] if len(args) > 6 else {})


def test_api_reads_equal_direct_reads_over_jsonrpc_with_an_api_key_and_json2(emulator, settings, database, odoo_db):
    # Odoo's database keeps fractions of a second that the wire does not show (s.4): partners written in one
    # second are ordered by them, not by id, and the keyset's T = 'HH:MM:SS' ties with all of them.
    with psycopg.connect(odoo_db.url) as conn:
        conn.execute("update res_partner set write_date = write_date + (id * 7919 % 1000) * interval '1 ms'")
    sync(settings, database, spec("db", direct(odoo_db.url), mode="full", streams=COMPARED))
    via_rpc = sync(settings, database, spec("rpc", api(emulator.url, JSONRPC_KEY), streams=COMPARED))
    assert via_rpc.status == "succeeded"
    for stream in COMPARED:
        got, truth = bronze(settings, "rpc", stream), bronze(settings, "db", stream)
        assert got.num_rows == truth.num_rows > 0, stream
        expected, read = comparable(truth, got)
        assert read == expected, stream
        assert_exactly_once_per_extraction(bronze_in_postgres(database, "rpc", stream), ("id",))
    lines = bronze(settings, "rpc", "account_move_line")
    assert lines.schema.field("move_id").type == pa.int64() and lines.schema.field("write_date").type == \
        pa.timestamp("us", tz="UTC")
    names = dict(source(odoo_db, "select id, move_name from account_move_line where move_name <> '/'"))
    assert names and all(r["move_id_name"] == names[r["id"]] for r in lines.to_pylist() if r["id"] in names)
    partners = bronze(settings, "rpc", "res_partner")
    assert pa.types.is_boolean(partners.schema.field("active").type)
    assert False in partners.column("active").to_pylist(), "archived partners too (active_test: false)"
    log = emulator.log()
    assert {e["path"] for e in log} == {"/jsonrpc"}
    calls = [execute_kw(e) for e in log]
    keyset = [d for d, _ in calls for i in range(len(d) - 4) if d[i] == "|" and d[i + 2] == "&"
              and [d[i + 1][:2], d[i + 3][:2], d[i + 4][:2]] == [["write_date", ">"], ["write_date", "="], ["id", ">"]]]
    assert keyset, "pages after the first follow (write_date, id) (odoo.md s.6)"
    tied = [d for d, kw in calls if kw.get("order") == "id asc" for i in range(len(d) - 1)
            if d[i][:2] == ["write_date", ">="] and d[i + 1] == ["write_date", "<", shift(d[i][2], 1)]]
    assert tied, "a page of records tying on the wire was read through by id"

    # JSON-2 with a bearer key, two companies' worth of rows and French names, as the direct reads give them.
    emulator.clear_log()
    text = spec("j2", api(emulator.url, JSON2, "  companies: [2]\n  lang: fr_FR\n"),
                streams=("res_partner", "product_product"))
    assert sync(settings, database, text).status == "succeeded"
    assert ids(bronze(settings, "j2", "res_partner")) == [r[0] for r in source(
        odoo_db, "select id from res_partner where company_id = 2 or company_id is null order by id")]
    variants = bronze(settings, "j2", "product_product").to_pylist()
    names = dict(source(odoo_db, "select p.id, coalesce(t.name->>'fr_FR', t.name->>'en_US') from product_product p"
                                  " join product_template t on t.id = p.product_tmpl_id"
                                  " where t.company_id = 2 or t.company_id is null"))
    assert {v["id"]: v["name"] for v in variants} == names
    assert {e["path"].split("/")[3] for e in emulator.log()} == {"res.partner", "product.product"}


def test_records_written_between_pages_are_read_by_the_next_run_and_5xx_are_retried(emulator, settings, database,
                                                                                    odoo_db):
    extra = "  lookback_s: 0\n  retry: {initial_s: 0.05, max_s: 0.2}\n"
    text = spec("rpc", api(emulator.url, JSONRPC_PASSWORD, extra), streams=("res_partner",))
    emulator.set_faults(page_write={"every": 2, "times": 4, "count": 2, "action": "touch"},
                        errors_5xx={"every": 7, "status": 502, "count": 3})
    first = sync(settings, database, text)
    assert emulator.stats()["by_note"].get("5xx") == 3, "502s from the proxy were retried"
    emulator.clear_faults()
    second = sync(settings, database, text)
    table = bronze(settings, "rpc", "res_partner")
    assert_exactly_once_per_extraction(bronze_in_postgres(database, "rpc", "res_partner"), ("id",))
    bound = first.tables[0].cursor  # exclusive: one second past the newest write_date seen while planning
    touched = [r[0] for r in source(odoo_db, "select id from res_partner where write_date >= %s order by id",
                                    (bound,))]
    assert 4 <= len(touched) <= 8 and ids(of_run(table, second.run_id)) == touched, "moved past the bound: next run"
    assert set(ids(of_run(table, first.run_id))) | set(touched) == {r[0] for r in source(
        odoo_db, "select id from res_partner")}, "nothing lost"
    latest: dict[int, datetime] = {}
    for i, ts in zip(table.column("id").to_pylist(), table.column("write_date").to_pylist()):
        latest[i] = max(ts, latest.get(i, ts))
    assert latest == {i: ts.replace(tzinfo=timezone.utc) for i, ts in source(
        odoo_db, "select id, write_date from res_partner")}


def test_a_web_session_that_expires_logs_in_again_and_errors_name_the_model(emulator, settings, database, odoo_db):
    from types import SimpleNamespace

    from connectors.httpkit.egress import EgressPolicy
    from connectors.httpkit.errors import HttpFailed
    from connectors.odoo.spec import OdooApiSource
    from connectors.odoo.rpc import connect
    from engine.core.spec import SecretRef

    source_spec = OdooApiSource(mode="jsonrpc", base_url=emulator.url, database=DB, login=LOGIN,
                                password=SecretRef(secret="odoo_password"), session=True)

    async def calls() -> list[Any]:
        async with connect(source_spec, EgressPolicy(allow_loopback=True), {"odoo_password": PASSWORD},
                           SimpleNamespace(identity="test")) as rpc:
            before = await rpc.call("res.company", "search_count", [])
            emulator.admin("POST", "/_emulator/odoo/sessions/expire")
            after = await rpc.call("res.company", "search_count", [])
            with pytest.raises(HttpFailed, match=r"Private methods .* the user 'admin' may not read res.partner"):
                await rpc.call("res.partner", "_read_everything", [])
            return [before, after]

    assert asyncio.run(calls()) == [3, 3]
    notes = [e["note"] for e in emulator.log()]
    assert notes.count("session.authenticate") == 2 and "SessionExpiredException" in notes

    fields = "  fields: {sale_order: [name, partner_id, amount_total, state]}\n"
    text = spec("web", api(emulator.url, SESSION, fields), streams=("sale_order",))
    assert sync(settings, database, text).status == "succeeded"
    orders = bronze(settings, "web", "sale_order")
    assert ids(orders) == [r[0] for r in source(odoo_db, "select id from sale_order")]
    assert [n for n in orders.column_names if not n.startswith("_ipai")] == [
        "id", "name", "partner_id", "partner_id_name", "amount_total", "state", "write_date"]
    assert {e["path"].split("/")[2] for e in emulator.log() if e["path"] != "/jsonrpc"} >= {"session", "dataset"}


def test_wrong_credentials_or_fields_fail_at_once_with_what_to_do(emulator, settings, database, vault):
    vault.set("bad_key", "wrong-key-5e3c91")
    emulator.clear_log()
    text = spec("j2", api(emulator.url, "  mode: json2\n  api_key: {secret: bad_key}\n"), streams=("res_partner",))
    with pytest.raises(RunFailed, match=r"answered 401: Invalid apikey; Odoo refused the credential: wrong "
                                        r"login/password or API key") as failed:
        sync(settings, database, text)
    assert "wrong-key-5e3c91" not in str(failed.value) and "Traceback" not in str(failed.value)
    assert len(emulator.log()) == 1, "a refused key is not retried"
    text = spec("rpc", api(emulator.url, f"  mode: jsonrpc\n  login: {LOGIN}\n  api_key: {{secret: bad_key}}\n"),
                streams=("res_partner",))
    with pytest.raises(RunFailed, match=r"refused login 'admin' on database 'acme': wrong login/password or API "
                                        r"key; check `login:` and store the secret again with `ipai secret set "
                                        r"bad_key`") as failed:
        sync(settings, database, text)
    assert "wrong-key-5e3c91" not in str(failed.value)
    text = spec("rpc2", api(emulator.url, JSONRPC_KEY, "  fields: {res_partner: [name, emial]}\n"),
                streams=("res_partner",))
    with pytest.raises(RunFailed, match=r"failed while planning: stream res_partner: res.partner has no field emial"):
        sync(settings, database, text)


@pytest.mark.parametrize(("source_text", "message"), [
    (f"  mode: json2\n  base_url: https://x.odoo.com\n  database: x\n  login: {LOGIN}\n", "json2 authenticates with"),
    (f"  mode: jsonrpc\n  base_url: https://x.odoo.com\n  database: x\n  login: {LOGIN}\n"
     "  api_key: {secret: k}\n  session: true\n", "logs in with `password:`"),
    ("  mode: jsonrpc\n  base_url: https://x.odoo.com\n  database: x\n  api_key: {secret: k}\n", "needs `login:`"),
    ("  mode: postgres\n  url: postgresql://u:pw@h/db\n", "store the whole URL as a secret"),
    ("  mode: postgres\n  url: postgresql://u@h/db\n  translated_fields: {res_partners: [name]}\n",
     "unknown stream res_partners"),
])
def test_specs_are_checked_when_loaded(source_text, message):
    with pytest.raises(SpecError, match=message.replace("`", ".").replace("(", r"\(")):
        parse_spec(spec("x", source_text))
