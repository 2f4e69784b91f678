"""Gold views on real Postgres, over silver built from real bronze of real syncs (the sample shop, the
GitHub and GA4 emulators over HTTP, an Odoo-shaped database read directly), on the shared local Ray.

Every shipped view is applied and its numbers checked against values computed here in Python from the
source (sample shop, Odoo tables) or from bronze (GitHub, GA4); a broken view is reported with its file,
line and Postgres' message while the others apply and its old version stays; YAML that misses or invents
a column is refused; the analyst role reads gold and nothing of the control plane.

The syncs run once per module (about 20 s); each test then takes well under a few seconds.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from engine.controlplane.settings import Settings
from engine.controlplane.db import Database
from engine.controlplane.vault import set_secret
from connectors.specload import parse_spec
from engine.controlplane.gold import scope_for
from engine.controlplane.locations import server_identity
from layers.gold.apply import DEFAULT_DIRECTORY, GoldScope, apply_gold, list_gold, load_gold
from tests.emulators.odoo import schema as odoo_schema
from tests.emulators.harness import EmulatorProcess
from tests.support.cli import base_env
from tests.support.databases import migrated, scratch_database
from tests.support.syncing import sync
from tests.support.truth import source_rows

TOKEN = "gold-canary-token-5e1b"
SHIPPED = ("gold_engineering_pull_requests", "gold_finance_invoices", "gold_sales_orders", "gold_web_daily_traffic",
           "gold_engineering_pr_throughput", "gold_finance_receivables_aging", "gold_sales_daily_revenue")
SAMPLE = """
name: sample
source_type: sample
source: {{seed: 3, days: 20, today: {today}, customers: 300, orders: 2000, partition_rows: 1000}}
"""
GA4_TRAFFIC = ("date", "country", "deviceCategory")
DELETE_ONE = {
    "github_pull_requests": (("repo", "number"), "merged_at is not null order by repo, number limit 1"),
    "ga4_daily_traffic": (("property_id", *GA4_TRAFFIC), "\"deviceCategory\" = 'mobile' order by sessions desc limit 1"),
    "odoo_account_move": (("id",), "state = 'posted' and move_type = 'out_invoice' and amount_residual_signed <> 0"
                                   " order by id desc limit 1"),
    "sample_orders": (("id",), "true order by id limit 1 offset 7"),
    "sample_customers": (("id",), "id = (select customer_id from silver.sample_orders order by id limit 1 offset 9)"),
    "sample_order_lines": (("order_id", "line_no"), "line_no = 2 order by order_id limit 1 offset 3"),
}
"""Per silver table, the row the test soft-deletes (`_ipai_deleted`): its key columns and how it is picked."""


@dataclass
class Lake:
    db: Database
    settings: Settings
    sample_today: int
    deleted: dict[str, tuple[Any, ...]]
    """Per silver table of DELETE_ONE, the key of the row marked deleted."""
    source: Database
    """Where Odoo's tables are (schema odoo_src)."""

    def rows(self, query: str, params: Any = None, *, db: Database | None = None) -> list[tuple[Any, ...]]:
        with psycopg.connect((db or self.db).url) as conn:
            return conn.execute(query, params).fetchall()


def _sync(db: Database, settings: Settings, text: str) -> None:
    # silver is what gold reads; prod, so the tables are the plain bronze.raw_x, silver.x and gold.x
    text = "env: prod\nlayers: [bronze, silver]\n" + text.lstrip("\n")
    result = sync(settings, db, text)
    assert result.status == "succeeded", result


def _sync_sample(db: Database, settings: Settings) -> None:
    _sync(db, settings, SAMPLE.format(today=17))
    _sync(db, settings, SAMPLE.format(today=20))  # incremental: orders and customers changed since come again


def _sync_github(db: Database, settings: Settings) -> None:
    with EmulatorProcess("github", "--token", TOKEN, "--repos", "2", "--issues-per-repo", "2500",
                         "--commits-per-repo", "1") as gh:
        _sync(db, settings, f"""
name: github
source_type: github
auth: {{type: bearer, token: {{secret: github_token}}}}
source:
  base_url: {gh.url}
  repos: [acme/repo1, acme/repo2]
  rate_limit: {{requests_per_second: 200, burst: 20}}
streams: [{{name: pull_requests}}]
""")


def _sync_ga4(db: Database, settings: Settings) -> None:
    start = datetime.now(timezone.utc).date() - timedelta(days=2)
    with EmulatorProcess("ga4", "--token", TOKEN, "--properties", "111111111,222222222", "--days", "4",
                         "--rows-per-day", "120") as ga:
        _sync(db, settings, f"""
name: ga4
source_type: ga4
auth: {{type: bearer, token: {{secret: ga4_token}}}}
source:
  base_url: {ga.url}
  property_ids: ["111111111", "222222222"]
  start_date: "{start.isoformat()}"
  rate_limit: {{requests_per_second: 200, burst: 20}}
  reports:
    - name: daily_traffic
      dimensions: [{", ".join(GA4_TRAFFIC)}]
      metrics: [activeUsers, sessions, screenPageViews, bounceRate, averageSessionDuration]
""")


def _sync_odoo(db: Database, settings: Settings, source: Database) -> None:
    """Odoo's tables in a database of their own: a source is never the control plane's database."""
    with psycopg.connect(source.url) as conn:
        odoo_schema.create(conn, "odoo_src", partners=80, moves=160, orders=5, products=10, seed=11)
        # The generated invoices are all long past due; move some open ones' due dates around today, as a
        # user editing them in Odoo would, so that every aging bucket has something.
        open_ids = [r[0] for r in conn.execute(
            "select id from odoo_src.account_move where state = 'posted' and move_type = 'out_invoice'"
            " and amount_residual_signed <> 0 order by id")]
        assert len(open_ids) >= 10
        for i, shift in enumerate((10, 0, -1, -30, -31, -60, -61, -90, -91)):
            conn.execute("update odoo_src.account_move set invoice_date_due = current_date + %s,"
                         " write_date = now() at time zone 'utc' where id = %s", (shift, open_ids[i]))
    _sync(db, settings, f"""
name: odoo
source_type: odoo
source: {{mode: postgres, url: "{source.url}", db_schema: odoo_src, partition_rows: 100}}
streams: [{{name: res_company}}, {{name: res_partner}}, {{name: account_move}}]
""")


@pytest.fixture(scope="module")
def lake(admin_url: str, ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    """A migrated database with bronze and silver from real syncs of all four sources."""
    with scratch_database(admin_url) as db, scratch_database(admin_url) as source:
        migrated(db)
        tmp = tmp_path_factory.mktemp("gold")
        settings = Settings(home=tmp / "home", database_url=db.url, lakehouse_uri=str(tmp / "lakehouse"),
                            ray_address=None)
        with pytest.MonkeyPatch.context() as env:
            env.setenv("IPAI_DEV_MODE", "1")  # the emulators speak plain HTTP on loopback
            env.setenv("IPAI_CREDENTIAL_IDLE_S", "20")
            set_secret(db, settings.home, "github_token", TOKEN)
            set_secret(db, settings.home, "ga4_token", TOKEN)
            # The four instances sync side by side (a run's time here is mostly fixed costs, not work).
            with ThreadPoolExecutor(4) as pool:
                for done in [pool.submit(_sync_sample, db, settings), pool.submit(_sync_github, db, settings),
                             pool.submit(_sync_ga4, db, settings), pool.submit(_sync_odoo, db, settings, source)]:
                    done.result()
        deleted = _mark_deleted(db)
        yield Lake(db, settings, 20, deleted, source)


def _mark_deleted(db: Database) -> dict[str, tuple[Any, ...]]:
    """Soft-delete one row of each silver table of DELETE_ONE (a merged PR, an open invoice, ...)."""
    out = {}
    with psycopg.connect(db.url) as conn:
        for table, (key, pick) in DELETE_ONE.items():
            columns = ", ".join(f'"{c}"' for c in key)
            row = conn.execute(f"select {columns} from silver.{table} where {pick}").fetchone()
            updated = conn.execute(f"update silver.{table} set _ipai_deleted = true where ({columns}) = "
                                   f"({', '.join(['%s'] * len(key))})", row)
            assert updated.rowcount == 1
            out[table] = tuple(row)
    return out


@pytest.fixture(scope="module")
def applied(lake: Lake) -> Any:
    """The shipped views, applied once for the module."""
    with lake.db.connect() as conn:
        return apply_gold(conn, scope=prod_scope(conn))


def prod_scope(conn: psycopg.Connection[Any]) -> GoldScope:
    """The default tenant's prod scope, with the silver tables the registry knows on this server."""
    return scope_for(conn, server_identity(conn.info.dsn), tenant="local", env="prod")


def view_rows(lake: Lake, view: str, columns: str = "*") -> list[dict[str, Any]]:
    with psycopg.connect(lake.db.url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(f"select {columns} from gold.{view}").fetchall()


def today_in_db(lake: Lake) -> date:
    return lake.rows("select current_date")[0][0]


# -- the shipped views ------------------------------------------------------------------------------------


def test_every_shipped_view_applies_in_dependency_order_with_its_comments(lake, applied):
    assert applied.failed == () and applied.skipped == ()
    assert set(applied.applied) == set(SHIPPED)
    order = applied.applied
    for base, dependent in (("gold_engineering_pull_requests", "gold_engineering_pr_throughput"),
                            ("gold_finance_invoices", "gold_finance_receivables_aging"),
                            ("gold_sales_orders", "gold_sales_daily_revenue")):
        assert order.index(base) < order.index(dependent)
    views, _ = load_gold(DEFAULT_DIRECTORY)
    for view in views:
        described = lake.rows("select obj_description(%s::regclass, 'pg_class')", (f"gold.{view.name}",))
        assert described == [(view.doc.description,)]
        columns = dict(lake.rows("select attname, col_description(attrelid, attnum) from pg_attribute"
                                 " where attrelid = %s::regclass and attnum > 0", (f"gold.{view.name}",)))
        assert columns == {c.name: c.description for c in view.doc.columns}
    with lake.db.connect() as conn:
        listed = {x.name: x for x in list_gold(conn)}
    assert set(listed) == set(SHIPPED) and all(x.defined and x.in_database for x in listed.values())


def _bronze_latest(lake: Lake, table: str, key: tuple[str, ...], order: str) -> list[dict[str, Any]]:
    """The latest bronze row per key, in Python (what silver is to hold)."""
    with psycopg.connect(lake.db.url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        rows = cur.execute(f"select * from bronze.raw_{table} order by {order}").fetchall()
    latest = {tuple(row[c] for c in key): row for row in rows}  # ascending: the last one per key wins
    return list(latest.values())


def _utc(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))


def _monday(t: datetime) -> date:
    return t.date() - timedelta(days=t.weekday())


def test_engineering_throughput_counts_and_times_to_merge(lake, applied):
    prs = [p for p in _bronze_latest(lake, "github_pull_requests", ("id",), "updated_at, _ipai_extracted_at")
           if (p["repo"], p["number"]) != lake.deleted["github_pull_requests"]]
    opened: Counter[tuple[str, date]] = Counter()
    merge_hours: dict[tuple[str, date], list[float]] = defaultdict(list)
    for p in prs:
        created, merged = _utc(p["created_at"]), _utc(p["merged_at"])
        opened[(p["repo"], _monday(created))] += 1
        if merged is not None:
            merge_hours[(p["repo"], _monday(merged))].append((merged - created).total_seconds() / 3600)
    assert max(len(h) for h in merge_hours.values()) >= 3, "some weeks must have several merges to test a median"

    got = {(r["repo"], r["week_start"]): r for r in view_rows(lake, "gold_engineering_pr_throughput")}
    assert set(got) == set(opened) | set(merge_hours)
    for week, row in got.items():
        hours = merge_hours.get(week, [])
        assert (row["prs_opened"], row["prs_merged"]) == (opened.get(week, 0), len(hours)), week
        if hours:
            assert row["median_hours_to_merge"] == pytest.approx(statistics.median(hours))
            assert row["avg_hours_to_merge"] == pytest.approx(statistics.fmean(hours))
        else:
            assert row["median_hours_to_merge"] is None and row["avg_hours_to_merge"] is None

    detail = {(r["repo"], r["number"]): r for r in view_rows(lake, "gold_engineering_pull_requests")}
    assert len(detail) == len(prs)
    some = next(p for p in prs if p["merged_at"])
    row = detail[(some["repo"], some["number"])]
    assert row["author_login"] and row["author_login"] in some["user"] and row["is_merged"]
    assert row["merged_at"] == _utc(some["merged_at"])


def test_web_daily_traffic_totals_and_session_weighted_ratios(lake, applied):
    key = ("property_id", *GA4_TRAFFIC)
    rows = [r for r in _bronze_latest(lake, "ga4_daily_traffic", key, "_ipai_extracted_at")
            if tuple(r[c] for c in key) != lake.deleted["ga4_daily_traffic"]]
    days: dict[tuple[str, date], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        days[(r["property_id"], date.fromisoformat(r["date"]))].append(r)

    got = {(r["property_id"], r["date"]): r for r in view_rows(lake, "gold_web_daily_traffic")}
    assert set(got) == set(days) and len({p for p, _ in got}) == 2
    for day, parts in days.items():
        sessions = sum(r["sessions"] for r in parts)
        row = got[day]
        assert (row["sessions"], row["active_users"], row["page_views"]) == (
            sessions, sum(r["activeUsers"] for r in parts), sum(r["screenPageViews"] for r in parts))
        assert row["bounce_rate"] == pytest.approx(sum(r["sessions"] * r["bounceRate"] for r in parts) / sessions)
        assert row["avg_session_duration_s"] == pytest.approx(
            sum(r["sessions"] * r["averageSessionDuration"] for r in parts) / sessions)
        assert row["mobile_session_share"] == pytest.approx(
            sum(r["sessions"] for r in parts if r["deviceCategory"] == "mobile") / sessions)
        assert row["countries"] == len({r["country"] for r in parts})


def _bucket(open_amount: Decimal, due: date | None, today: date) -> tuple[int, str]:
    if open_amount == 0:
        return 0, "settled"
    if due is None or due >= today:
        return 0, "not due"
    late = (today - due).days
    return late, next(b for limit, b in ((30, "1-30"), (60, "31-60"), (90, "61-90"), (10**9, "90+")) if late <= limit)


def test_finance_invoices_and_receivables_aging_from_the_odoo_tables(lake, applied):
    today = today_in_db(lake)
    partners = dict(lake.rows("select id, name from odoo_src.res_partner", db=lake.source))
    companies = dict(lake.rows("select id, name from odoo_src.res_company", db=lake.source))
    moves = lake.rows(
        "select id, name, move_type, company_id, commercial_partner_id, invoice_date_due, amount_total_signed,"
        " amount_residual_signed from odoo_src.account_move where state = 'posted'"
        " and move_type in ('out_invoice', 'out_refund', 'in_invoice', 'in_refund') and id <> %s",
        lake.deleted["odoo_account_move"], db=lake.source)
    expected = {}
    for mid, number, kind, company, partner, due, total, residual in moves:
        late, bucket = _bucket(residual, due, today)
        expected[mid] = (number, kind, companies[company], partners.get(partner), total, residual, late, bucket)
    got = {r["move_id"]: (r["number"], r["move_type"], r["company_name"], r["partner_name"], r["amount_total"],
                          r["amount_open"], r["days_overdue"], r["aging_bucket"])
           for r in view_rows(lake, "gold_finance_invoices")}
    assert got == expected
    receivable = [e for e in expected.values() if e[1].startswith("out_") and e[5] != 0]
    assert {e[7] for e in receivable} == {"not due", "1-30", "31-60", "61-90", "90+"}

    aging: dict[tuple[str, str | None], Counter[str]] = defaultdict(Counter)
    for _, _, company, partner, _, residual, late, bucket in receivable:
        aging[(company, partner)][bucket] += residual
        aging[(company, partner)]["documents"] += 1
        aging[(company, partner)]["late"] = max(aging[(company, partner)]["late"], late)
    got_aging = {(r["company_name"], r["partner_name"]): r for r in view_rows(lake, "gold_finance_receivables_aging")}
    assert set(got_aging) == set(aging)
    for who, sums in aging.items():
        row = got_aging[who]
        assert row["open_documents"] == sums["documents"] and row["max_days_overdue"] == sums["late"]
        assert [row[c] for c in ("not_due", "overdue_1_30", "overdue_31_60", "overdue_61_90", "overdue_90_plus")] == [
            sums[b] for b in ("not due", "1-30", "31-60", "61-90", "90+")]
        assert row["open_amount"] == sum(sums[b] for b in ("not due", "1-30", "31-60", "61-90", "90+"))


def test_sales_orders_join_customers_and_lines_and_roll_up_by_day(lake, applied):
    spec = parse_spec(SAMPLE.format(today=lake.sample_today))
    customers = {c["id"]: c for c in source_rows(spec, "customers").to_pylist()
                 if (c["id"],) != lake.deleted["sample_customers"]}
    lines: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for line in source_rows(spec, "order_lines").to_pylist():
        if (line["order_id"], line["line_no"]) != lake.deleted["sample_order_lines"]:
            lines[line["order_id"]].append(line)
    orders = [o for o in source_rows(spec, "orders").to_pylist() if (o["id"],) != lake.deleted["sample_orders"]]
    expected = {}
    for o in orders:
        c = customers.get(o["customer_id"])
        mine = lines[o["id"]]
        expected[o["id"]] = (o["status"], o["created_at"].date(), c and c["name"], c and c["tier"],
                             None if c is None else o["shipping_country"] != c["country"], o["amount"], len(mine),
                             sum(x["quantity"] for x in mine), sum(x["quantity"] * x["unit_price"] for x in mine))
    got = {r["order_id"]: (r["status"], r["order_date"], r["customer_name"], r["customer_tier"], r["is_cross_border"],
                           r["amount"], r["line_count"], r["units"], r["line_total"])
           for r in view_rows(lake, "gold_sales_orders")}
    assert got == expected
    assert Counter(o["status"] for o in orders)["cancelled"] > 0 and any(e[2] is None for e in expected.values())

    daily: dict[tuple[date, str, str], list[dict[str, Any]]] = defaultdict(list)
    for o in orders:
        daily[(o["created_at"].date(), o["shipping_country"], o["currency"])].append(o)
    got_daily = {(r["order_date"], r["shipping_country"], r["currency"]): r
                 for r in view_rows(lake, "gold_sales_daily_revenue")}
    assert set(got_daily) == set(daily)
    for key, group in daily.items():
        kept = [o for o in group if o["status"] != "cancelled"]
        row = got_daily[key]
        assert (row["orders"], row["cancelled_orders"], row["customers"]) == (
            len(group), len(group) - len(kept), len({o["customer_id"] for o in group}))
        assert row["units"] == sum(expected[o["id"]][7] for o in kept)
        assert row["revenue"] == sum((o["amount"] for o in kept), Decimal(0))
        if kept:
            assert row["avg_order_value"] == pytest.approx(sum(o["amount"] for o in kept) / len(kept))


# -- bad definitions --------------------------------------------------------------------------------------


def write_view(folder: Path, name: str, query: str, columns: dict[str, str] | None, *, description: str = "A test view.",
               source_type: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.sql").write_text(query)
    if columns is not None:
        listed = "".join(f"  - name: {c}\n    description: {d}\n" for c, d in columns.items())
        typed = f"source_type: {source_type}\n" if source_type else ""
        (folder / f"{name}.yaml").write_text(f"description: {description}\n{typed}columns:\n{listed}")


@pytest.fixture
def scratch_views(lake: Lake) -> Iterator[None]:
    """Drop the gold_test_* views a test made."""
    yield
    with lake.db.connect() as conn:
        for (name,) in conn.execute("select relname from pg_class where relnamespace = 'gold'::regnamespace"
                                    " and relname like 'gold\\_test\\_%'").fetchall():
            conn.execute(f"drop view if exists gold.{name} cascade")


STATUS_COLUMNS = {"status": "Order status.", "orders": "Orders with that status."}


def test_broken_sql_names_file_line_and_message_and_the_rest_still_apply(lake, tmp_path, scratch_views):
    first = tmp_path / "v1"
    write_view(first, "gold_test_by_status", "select status, count(*) as orders\nfrom silver.sample_orders\n"
                                             "group by status\n", STATUS_COLUMNS)
    write_view(first, "gold_test_customers", "select id from silver.sample_customers", {"id": "Customer id."})
    with lake.db.connect() as conn:
        assert apply_gold(conn, first, prod_scope(conn)).applied == ("gold_test_by_status", "gold_test_customers")
        before = conn.execute("select * from gold.gold_test_by_status order by 1").fetchall()

    second = tmp_path / "v2"
    write_view(second, "gold_test_by_status", "-- Orders by status, now with revenue.\nselect status,\n"
                                              "       count(*) as orders, sum(amount_usd) as revenue\n"
                                              "from silver.sample_orders\ngroup by status;\n",
               {**STATUS_COLUMNS, "revenue": "Revenue."})
    write_view(second, "gold_test_syntax", "select status,\n  count(*) as orders\nfrom silver.sample_orders\n"
                                           "group status\n", STATUS_COLUMNS)
    write_view(second, "gold_test_customers", "select id, tier from silver.sample_customers",
               {"id": "Customer id.", "tier": "Tier."})
    write_view(second, "gold_test_two", "select id from silver.sample_customers;\ndrop table silver.sample_customers;",
               {"id": "Customer id."})
    with lake.db.connect() as conn:
        result = apply_gold(conn, second, prod_scope(conn))
        failed = {f.view: f for f in result.failed}
        assert result.applied == ("gold_test_customers",)
        assert set(failed) == {"gold_test_by_status", "gold_test_syntax", "gold_test_two"}
        assert "more than one statement" in failed["gold_test_two"].message
        unknown = failed["gold_test_by_status"]
        assert (unknown.file, unknown.line, unknown.column) == (second / "gold_test_by_status.sql", 3, 32)
        assert 'column "amount_usd" does not exist' in unknown.message
        syntax = failed["gold_test_syntax"]
        assert (syntax.file, syntax.line, syntax.column) == (second / "gold_test_syntax.sql", 4, 7)
        assert 'syntax error at or near "status"' in syntax.message
        assert str(syntax).startswith(f"{second / 'gold_test_syntax.sql'}:4:7: syntax error")
        # The old version of the broken view is untouched, the new one never appeared, the good one changed.
        assert conn.execute("select * from gold.gold_test_by_status order by 1").fetchall() == before
        assert conn.execute("select to_regclass('gold.gold_test_syntax')").fetchone() == (None,)
        assert conn.execute("select count(tier) from gold.gold_test_customers").fetchone()[0] > 0

    env = base_env()
    env["IPAI_HOME"] = str(lake.settings.home)
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "gold", "apply", "--dir", str(second),
                           "--database-url", lake.db.url], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc
    assert f"{second / 'gold_test_by_status.sql'}:3:32: column \"amount_usd\" does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "gold.gold_test_customers" in proc.stdout


def test_yaml_missing_or_inventing_a_column_is_refused(lake, tmp_path, scratch_views):
    write_view(tmp_path, "gold_test_undocumented", "select status, count(*) as orders from silver.sample_orders"
                                                   " group by status", {"status": "Order status."})
    write_view(tmp_path, "gold_test_invented", "select status from silver.sample_orders",
               {"status": "Order status.", "revenue_eur": "Revenue in euros."})
    write_view(tmp_path, "gold_test_no_yaml", "select 1 as one", None)
    (tmp_path / "gold_test_bad_yaml.sql").write_text("select 1 as one")
    (tmp_path / "gold_test_bad_yaml.yaml").write_text("description: x\ncolumns:\n  - name: one\n")
    with lake.db.connect() as conn:
        result = apply_gold(conn, tmp_path, prod_scope(conn))
        failed = {f.view: f for f in result.failed}
        assert result.applied == () and set(failed) == {"gold_test_undocumented", "gold_test_invented",
                                                        "gold_test_no_yaml", "gold_test_bad_yaml"}
        for name in failed:
            assert conn.execute("select to_regclass(%s)", (f"gold.{name}",)).fetchone() == (None,)
    undocumented = failed["gold_test_undocumented"]
    assert undocumented.file == tmp_path / "gold_test_undocumented.yaml" and "orders" in undocumented.message
    invented = failed["gold_test_invented"]
    assert (invented.file, invented.line) == (tmp_path / "gold_test_invented.yaml", 5)
    assert "'revenue_eur'" in invented.message
    assert failed["gold_test_no_yaml"].file == tmp_path / "gold_test_no_yaml.yaml"
    assert "columns.0.description" in failed["gold_test_bad_yaml"].message


def test_changed_columns_replace_the_view_and_rebuild_its_dependents(lake, tmp_path, scratch_views):
    base = "gold_test_base"
    write_view(tmp_path / "a", base, "select id, tier, country from silver.sample_customers",
               {"id": "Id.", "tier": "Tier.", "country": "Country."})
    write_view(tmp_path / "a", "gold_test_top", "select tier, count(*) as n from gold.gold_test_base group by tier",
               {"tier": "Tier.", "n": "Customers."})
    write_view(tmp_path / "b", base, "select id, tier::varchar(20) as tier from silver.sample_customers",
               {"id": "Id.", "tier": "Tier, now at most 20 characters."})
    write_view(tmp_path / "b", "gold_test_top", "select tier, count(*) as n from gold.gold_test_base group by tier",
               {"tier": "Tier.", "n": "Customers."})
    with lake.db.connect() as conn:
        assert apply_gold(conn, tmp_path / "a", prod_scope(conn)).applied == (base, "gold_test_top")
        result = apply_gold(conn, tmp_path / "b", prod_scope(conn))  # a column dropped and one retyped: CREATE OR REPLACE cannot
        assert result.failed == () and result.applied == (base, "gold_test_top")
        columns = conn.execute("select attname, col_description(attrelid, attnum) from pg_attribute"
                               " where attrelid = 'gold.gold_test_base'::regclass and attnum > 0 order by attnum").fetchall()
        assert columns == [("id", "Id."), ("tier", "Tier, now at most 20 characters.")]
        assert conn.execute("select sum(n) from gold.gold_test_top").fetchone()[0] > 0


def test_a_view_over_missing_silver_is_skipped_and_one_over_the_control_plane_refused(lake, tmp_path, scratch_views):
    write_view(tmp_path, "gold_test_later", "select id from silver.hubspot_deals", {"id": "Deal id."})
    write_view(tmp_path, "gold_test_on_later", "select id from gold.gold_test_later", {"id": "Deal id."})
    write_view(tmp_path, "gold_test_leak", "select id, status from public.connector_runs",
               {"id": "Run id.", "status": "Run status."})
    with lake.db.connect() as conn:
        result = apply_gold(conn, tmp_path, prod_scope(conn))
        assert conn.execute("select to_regclass('gold.gold_test_leak')").fetchone() == (None,)
    assert [(s.view, "silver.hubspot_deals" in s.reason or "gold.gold_test_later" in s.reason)
            for s in result.skipped] == [("gold_test_later", True), ("gold_test_on_later", True)]
    [leak] = result.failed
    assert leak.view == "gold_test_leak" and "permission denied for table connector_runs" in leak.message


# -- the analyst role -------------------------------------------------------------------------------------


def test_analyst_reads_gold_and_nothing_of_the_control_plane(lake, applied, tmp_path, scratch_views):
    write_view(tmp_path, "gold_test_later_view", "select id from silver.sample_customers", {"id": "Id."})
    with lake.db.connect() as conn:
        assert apply_gold(conn, tmp_path, prod_scope(conn)).applied == ("gold_test_later_view",)  # a view made after the migration
        with conn.transaction(force_rollback=True):
            conn.execute("set local role analyst")
            for view in (*SHIPPED, "gold_test_later_view"):
                assert conn.execute(f"select count(*) from gold.{view}").fetchone()[0] > 0, view
        for relation in ("connector_runs", "connector_instances", "connector_definitions", "connector_state",
                         "connector_run_logs", "ipai_tenants", "vault.secrets", "vault.decrypted_secrets",
                         "bronze.raw_sample_orders", "silver.sample_orders", "bronze.raw_odoo_account_move"):
            with pytest.raises(errors.InsufficientPrivilege), conn.transaction(force_rollback=True):
                conn.execute("set local role analyst")
                conn.execute(f"select * from {relation} limit 1")
        with pytest.raises(errors.InsufficientPrivilege), conn.transaction(force_rollback=True):
            conn.execute("set local role analyst")
            conn.execute("select connector_list()")
        # And in the catalog: no table, view or sequence outside gold that analyst may read.
        readable = conn.execute(
            "select n.nspname || '.' || c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
            " where c.relkind in ('r', 'p', 'v', 'm', 'f', 'S') and n.nspname not in ('gold', 'pg_catalog',"
            " 'information_schema') and n.nspname not like 'pg\\_%' and case when c.relkind = 'S'"
            " then has_sequence_privilege('analyst', c.oid, 'SELECT, USAGE') else has_table_privilege('analyst',"
            " c.oid, 'SELECT') or has_any_column_privilege('analyst', c.oid, 'SELECT') end").fetchall()
        assert readable == []


@pytest.mark.usefixtures("ray_cluster")
def test_a_run_with_the_gold_layer_leaves_its_views_current(settings: Settings, database: Database) -> None:
    text = "layers: [bronze, silver, gold]\n" + SAMPLE.format(today=20).lstrip("\n")
    result = sync(settings, database, text)
    assert result.status == "succeeded"
    spec = parse_spec(text)
    with database.connect() as conn:
        orders = conn.execute("select count(*) from gold_dev.gold_sales_orders").fetchone()  # env dev: its own gold
        logged = conn.execute("select message, fields from connector_run_logs where run_id = %s and event = 'gold.applied'",
                              (result.run_id,)).fetchone()
    assert orders == (source_rows(spec, "orders").num_rows,)
    assert logged is not None and "gold_sales_orders" in logged[1]["applied"]
    assert any("gold_dev.gold_engineering_pull_requests" in s and "no github instance" in s
               for s in logged[1]["skipped"]), "views over absent silver wait for it"
    assert "gold_dev" in logged[0]


def test_gold_covers_every_instance_of_a_source_type_whatever_its_name(lake, applied):
    """A second GitHub instance, named gh_prod, appears in the engineering views beside `github`."""
    with pytest.MonkeyPatch.context() as env, EmulatorProcess(
            "github", "--token", TOKEN, "--repos", "1", "--issues-per-repo", "300", "--commits-per-repo", "1") as gh:
        env.setenv("IPAI_DEV_MODE", "1")
        _sync(lake.db, lake.settings, f"""
name: gh_prod
source_type: github
auth: {{type: bearer, token: {{secret: github_token}}}}
source: {{base_url: {gh.url}, repos: [acme/repo1], rate_limit: {{requests_per_second: 200, burst: 20}}}}
streams: [{{name: pull_requests}}]
""")
    with lake.db.connect() as conn:
        result = apply_gold(conn, scope=prod_scope(conn))
    assert result.failed == () and "gold_engineering_pull_requests" in result.applied
    per_instance = dict(lake.rows("select instance, count(*) from gold.gold_engineering_pull_requests group by 1"))
    silver = {name: lake.rows(f"select count(*) from silver.{name}_pull_requests where not _ipai_deleted")[0][0]
              for name in ("github", "gh_prod")}
    assert per_instance == silver and silver["gh_prod"] > 0
    throughput = lake.rows("select distinct instance from gold.gold_engineering_pr_throughput order by 1")
    assert throughput == [("gh_prod",), ("github",)]


def test_a_source_type_views_error_names_its_own_line_and_column(lake, applied, tmp_path, scratch_views):
    """The stream relations a source-type view reads are put in front of its query; an error still points into
    the file as written, in a WITH of its own or not."""
    write_view(tmp_path, "gold_test_typed", "-- orders per status\nselect instance, status,\n  sum(amount_usd) as total\n"
               "from silver.orders\ngroup by 1, 2\n", {"instance": "I.", "status": "S.", "total": "T."},
               source_type="sample")
    write_view(tmp_path, "gold_test_typed_with", "with o as (\n  select * from silver.orders\n)\nselect instance,\n"
               "  count(nope) as n from o group by 1\n", {"instance": "I.", "n": "N."}, source_type="sample")
    write_view(tmp_path, "gold_test_typed_ok", "with o as (select instance, id from silver.orders)\n"
               "select instance, count(*) as orders from o group by 1\n", {"instance": "I.", "orders": "N."},
               source_type="sample")
    with lake.db.connect() as conn:
        result = apply_gold(conn, tmp_path, prod_scope(conn))
    failed = {f.view: (f.line, f.column) for f in result.failed}
    assert failed == {"gold_test_typed": (3, 7), "gold_test_typed_with": (5, 9)}
    assert result.applied == ("gold_test_typed_ok",)
    assert lake.rows("select instance, orders from gold.gold_test_typed_ok") == [
        ("sample", lake.rows("select count(*) from silver.sample_orders")[0][0])]
