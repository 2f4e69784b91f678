"""The GA4 emulator keeps the wire contract (../shared/api-contracts/ga4.md) over real HTTP."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.emulators.harness import EmulatorError, EmulatorProcess

pytestmark = pytest.mark.integration  # every test here talks to an emulator process

TOKEN = "selftest-token"
PROP = "123456789"
OTHER = "987654321"
SERVICE_ACCOUNT = "loader@selftest.iam.gserviceaccount.com"
TODAY = "2024-06-30"
ROWS_PER_DAY = 2000
RUN = f"/v1beta/properties/{PROP}:runReport"
FINE = ["date", "pagePath", "city", "deviceCategory", "sessionSource"]
METRICS = ["activeUsers", "sessions", "screenPageViews", "eventCount", "bounceRate", "averageSessionDuration",
           "totalRevenue"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[rsa.RSAPrivateKey, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path_factory.mktemp("keys") / "service-account.pub.pem"
    pem.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, pem


def _start(pem: Path, *extra: str) -> EmulatorProcess:
    return EmulatorProcess("ga4", "--token", TOKEN, "--properties", f"{PROP},{OTHER}", "--seed", "11",
                           "--start-date", "2024-01-01", "--today", TODAY, "--rows-per-day", str(ROWS_PER_DAY),
                           "--service-account-email", SERVICE_ACCOUNT, "--service-account-public-key", str(pem),
                           *extra)


@pytest.fixture(scope="module")
def shared(keys: tuple[rsa.RSAPrivateKey, Path]) -> Iterator[EmulatorProcess]:
    with _start(keys[1]) as emulator:
        yield emulator


@pytest.fixture
def ga(shared: EmulatorProcess) -> EmulatorProcess:
    """The module's emulator with default quotas (every pool restarted), no faults and an empty log."""
    shared.clear_faults()
    shared.set_faults(ga4_quota={})  # a new quota configuration restarts the pools; clearing alone may not
    shared.clear_log()
    return shared


@pytest.fixture
def fresh(keys: tuple[rsa.RSAPrivateKey, Path]) -> Iterator[EmulatorProcess]:
    """An emulator of its own, for tests that move its date or processing generation."""
    with _start(keys[1]) as emulator:
        yield emulator


def client(emulator: EmulatorProcess, token: str | None = TOKEN) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=emulator.url, headers=headers, timeout=60)


def report(start: str, end: str | None = None, *, dimensions: list[str] | None = None,
           metrics: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"dateRanges": [{"startDate": start, "endDate": end or start}],
            "dimensions": [{"name": n} for n in (dimensions if dimensions is not None else FINE)],
            "metrics": [{"name": n} for n in (metrics if metrics is not None else METRICS)], **extra}


def values(row: dict[str, Any], part: str = "dimensionValues") -> list[str]:
    return [v["value"] for v in row[part]]


def google(code: int, status: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}


def sign(key: rsa.RSAPrivateKey, claims: dict[str, Any]) -> str:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    header = {"alg": "RS256", "typ": "JWT", "kid": "selftest-key-1"}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()))}"


# -- reports and paging ---------------------------------------------------------------------------------

def test_offset_paging_collects_exactly_row_count_rows_once_each(ga: EmulatorProcess):
    pages, seen, offset = [], [], 0
    with client(ga) as http:
        while True:  # as Airbyte pages: offset and limit as strings, stop once offset >= rowCount
            page = http.post(RUN, json=report("2024-03-05", offset=str(offset), limit="700")).json()
            pages.append(page)
            seen += page.get("rows", [])
            offset += 700
            if offset >= page["rowCount"]:
                break
    counts = {p["rowCount"] for p in pages}
    keys = [tuple(values(r)) for r in seen]
    assert len(counts) == 1 and len(seen) == counts.pop() == len(set(keys)) and len(pages) >= 3
    assert keys == sorted(keys)  # stable order: by dimension values
    truth = ga.admin("GET", "/_emulator/ga4/truth", params={"property": PROP, "date": "2024-03-05",
                                                           "dimensions": ",".join(FINE), "metrics": ",".join(METRICS)})
    assert truth["rows"] == seen and truth["rowCount"] == len(seen)
    assert 0.8 * ROWS_PER_DAY < len(seen) <= 1.1 * ROWS_PER_DAY  # about one row per fact at the finest grain


def test_values_are_strings_typed_by_metric_headers(ga: EmulatorProcess):
    with client(ga) as http:
        body = http.post(RUN, json=report("2024-03-01", "2024-03-03", dimensions=["date", "country"],
                                          limit=50)).json()
    assert body["dimensionHeaders"] == [{"name": "date"}, {"name": "country"}]
    assert body["metricHeaders"] == [
        {"name": "activeUsers", "type": "TYPE_INTEGER"}, {"name": "sessions", "type": "TYPE_INTEGER"},
        {"name": "screenPageViews", "type": "TYPE_INTEGER"}, {"name": "eventCount", "type": "TYPE_INTEGER"},
        {"name": "bounceRate", "type": "TYPE_FLOAT"}, {"name": "averageSessionDuration", "type": "TYPE_SECONDS"},
        {"name": "totalRevenue", "type": "TYPE_CURRENCY"}]
    assert body["kind"] == "analyticsData#runReport"
    assert body["metadata"] == {"currencyCode": "USD", "timeZone": "America/Los_Angeles"}
    rows = body["rows"]
    assert all(isinstance(v["value"], str) for r in rows for v in r["dimensionValues"] + r["metricValues"])
    assert {values(r)[0] for r in rows} == {"20240301", "20240302", "20240303"}
    for row in rows:
        users, sessions, views, events = (int(v) for v in values(row, "metricValues")[:4])
        bounce, duration, revenue = (float(v) for v in values(row, "metricValues")[4:])
        assert 0 < users <= sessions <= views < events and 0 <= bounce <= 1 and duration > 0 and revenue >= 0
    assert "Côte d’Ivoire" in {values(r)[1] for r in rows}  # UTF-8, sorted after "Canada"


def test_reports_agree_and_keep_empty_rows_adds_rows(ga: EmulatorProcess):
    with client(ga) as http:
        by_country = http.post(RUN, json=report("2024-02-01", "2024-02-07", dimensions=["country"],
                                                metrics=["sessions"])).json()
        total = http.post(RUN, json=report("2024-02-01", "2024-02-07", dimensions=[], metrics=["sessions"])).json()
        dropped = http.post(RUN, json=report("2024-02-01", limit=100_000)).json()
        kept = http.post(RUN, json=report("2024-02-01", limit=100_000, keepEmptyRows=True)).json()
    assert sum(int(values(r, "metricValues")[0]) for r in by_country["rows"]) == int(
        values(total["rows"][0], "metricValues")[0])
    assert "dimensionHeaders" not in total and "dimensionValues" not in total["rows"][0]
    assert kept["rowCount"] > dropped["rowCount"]
    assert any(set(values(r, "metricValues")) == {"0"} for r in kept["rows"])
    assert not any(set(values(r, "metricValues")) == {"0"} for r in dropped["rows"])


def test_empty_and_past_the_end_pages_omit_rows(ga: EmulatorProcess):
    with client(ga) as http:
        before_data = http.post(RUN, json=report("2023-06-01", "2023-06-30")).json()
        beyond = http.post(RUN, json=report("2024-03-05", offset=10 ** 6)).json()
        relative = http.post(RUN, json=report("2daysAgo", "yesterday", dimensions=["date"])).json()
    # A report without rows has no rowCount either (proto3 drops zeros; see ga4_render.py).
    assert set(before_data) == {"dimensionHeaders", "metricHeaders", "metadata", "kind"}
    assert "rows" not in beyond and beyond["rowCount"] > 0
    assert [values(r)[0] for r in relative["rows"]] == ["20240628", "20240629"]


def test_limit_defaults_to_10000_and_is_capped_at_250000(ga: EmulatorProcess):
    half_year = report("2024-01-01", "2024-06-30", dimensions=["date", "pagePath", "city"], metrics=["sessions"])
    with client(ga) as http:
        default = http.post(RUN, json=half_year).json()
        capped = http.post(RUN, json={**half_year, "limit": 10 ** 6}).json()
        rest = http.post(RUN, json={**half_year, "offset": 250_000, "limit": 10 ** 6}).json()
    assert default["rowCount"] == capped["rowCount"] > 250_000
    assert len(default["rows"]) == 10_000 and len(capped["rows"]) == 250_000
    assert len(rest["rows"]) == capped["rowCount"] - 250_000
    assert capped["rows"][:10_000] == default["rows"]


def test_several_date_ranges_add_a_date_range_dimension(ga: EmulatorProcess):
    body = {"dateRanges": [{"startDate": "2024-03-01", "endDate": "2024-03-02"},
                           {"startDate": "2024-03-02", "endDate": "2024-03-03", "name": "later"}],
            "dimensions": [{"name": "date"}], "metrics": [{"name": "sessions"}]}
    with client(ga) as http:
        answer = http.post(RUN, json=body).json()
    assert answer["dimensionHeaders"] == [{"name": "date"}, {"name": "dateRange"}]
    assert [values(r) for r in answer["rows"]] == [["20240301", "date_range_0"], ["20240302", "date_range_0"],
                                                   ["20240302", "later"], ["20240303", "later"]]
    assert values(answer["rows"][1], "metricValues") == values(answer["rows"][2], "metricValues")


def test_same_seed_same_report_and_metadata_lists_what_is_served(ga: EmulatorProcess, fresh: EmulatorProcess):
    with client(ga) as one, client(fresh) as two:
        first = one.post(RUN, json=report("2024-02-10", limit=300)).content
        again = two.post(RUN, json=report("2024-02-10", limit=300)).content
        meta = one.get(f"/v1beta/properties/{PROP}/metadata").json()
        universal = one.get("/v1beta/properties/0/metadata").json()
        other = one.post(f"/v1beta/properties/{OTHER}:runReport", json=report("2024-02-10", limit=300)).json()
    assert first == again
    assert json.loads(first)["rows"] != other["rows"] and other["metadata"]["currencyCode"] == "EUR"
    assert meta["name"] == f"properties/{PROP}/metadata" and universal["name"] == "properties/0/metadata"
    served = {m["apiName"]: m["type"] for m in meta["metrics"]}
    assert {d["apiName"] for d in meta["dimensions"]} >= {"date", "country", "city", "deviceCategory",
                                                          "sessionSource", "pagePath"}
    assert served["bounceRate"] == "TYPE_FLOAT" and served["averageSessionDuration"] == "TYPE_SECONDS"
    assert served["totalRevenue"] == "TYPE_CURRENCY" and served["activeUsers"] == "TYPE_INTEGER"


# -- errors -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("change", "named"), [
    ({"dimensions": [{"name": "date"}, {"name": "browserSize"}]}, "browserSize"),
    ({"metrics": [{"name": "sessionz"}]}, "sessionz"),
    ({"dimensions": [{"name": n} for n in FINE + ["country", "browser", "language", "eventName", "hostName"]]},
     "dimensions"),
    ({"metrics": [{"name": n} for n in METRICS + ["newUsers", "totalUsers", "keyEvents", "transactions"]]},
     "metrics"),
    ({"dateRanges": [{"startDate": "2024-02-30", "endDate": "2024-03-01"}]}, "dateRanges[0].startDate"),
    ({"dateRanges": [{"startDate": "2024-03-02", "endDate": "2024-03-01"}]}, "dateRanges[0].startDate"),
    ({"limit": "ten"}, "'limit'"),
    ({"offset": -1}, "offset"),
    ({"keepEmptyRow": True}, '"keepEmptyRow"'),
    ({"dimensionFilter": {"filter": {"fieldName": "country"}}}, "dimensionFilter"),
])
def test_invalid_requests_are_400_naming_the_field(ga: EmulatorProcess, change: dict[str, Any], named: str):
    with client(ga) as http:
        answer = http.post(RUN, json={**report("2024-03-01"), **change})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == 400 and error["status"] == "INVALID_ARGUMENT" and named in error["message"]


def test_unknown_property_is_403_and_auth_is_required(ga: EmulatorProcess):
    with client(ga) as http, client(ga, token=None) as anonymous, client(ga, token="wrong") as wrong:
        unknown = http.post("/v1beta/properties/555:runReport", json=report("2024-03-01"))
        unknown_meta = http.get("/v1beta/properties/555/metadata")
        no_auth = anonymous.post(RUN, json=report("2024-03-01"))
        bad = wrong.post(RUN, json=report("2024-03-01"))
        pivot = http.post(f"/v1beta/properties/{PROP}:runPivotReport", json={})
    denied = google(403, "PERMISSION_DENIED", "User does not have sufficient permissions for this property.")
    assert unknown.status_code == unknown_meta.status_code == 403
    assert unknown.json() == unknown_meta.json() == denied
    assert no_auth.status_code == bad.status_code == 401
    assert no_auth.json()["error"]["status"] == bad.json()["error"]["status"] == "UNAUTHENTICATED"
    assert bad.headers["www-authenticate"].startswith("Bearer") and pivot.status_code == 404
    assert [e["note"] for e in ga.log()] == ["permission-denied", "permission-denied", "no-auth",
                                            "bad-credentials", "not-found"]


def test_base_faults_answer_with_google_bodies(ga: EmulatorProcess):
    ga.set_faults(errors_5xx={"every": 2, "status": 503, "count": 1}, truncate={"every": 2, "count": 1},
                  latency_ms=50, storm={"every": 5, "status": 429, "retry_after": None, "seconds": 0.2, "count": 1})
    with client(ga) as http:
        started = time.perf_counter()
        answers = [http.post(RUN, json=report("2024-03-01", limit=20)) for _ in range(5)]
        elapsed = time.perf_counter() - started
    assert [a.status_code for a in answers] == [200, 503, 200, 200, 429]
    assert answers[1].json() == google(503, "UNAVAILABLE", "The service is currently unavailable.")
    assert answers[4].json() == google(429, "RESOURCE_EXHAUSTED", "Exhausted concurrent requests quota.")
    with pytest.raises(json.JSONDecodeError):
        answers[2].json()  # the second 200 answer carries half its body
    assert answers[3].json()["rows"] and elapsed >= 0.25
    assert not any(h.startswith("x-ratelimit") for a in answers for h in a.headers)
    assert ga.stats()["by_note"] == {"5xx": 1, "truncated": 1, "storm": 1}


# -- quotas ---------------------------------------------------------------------------------------------

def test_property_quota_is_returned_on_request_and_decrements(ga: EmulatorProcess):
    with client(ga) as http:
        without = http.post(RUN, json=report("2024-03-01", limit=10))
        small = http.post(RUN, json=report("2024-03-01", limit=10, returnPropertyQuota=True)).json()
        big = http.post(RUN, json=report("2024-01-01", "2024-01-20", metrics=["sessions"], limit=25_000,
                                         returnPropertyQuota=True)).json()
    assert "propertyQuota" not in without.json()
    assert list(small["propertyQuota"]) == ["tokensPerDay", "tokensPerHour", "concurrentRequests",
                                            "serverErrorsPerProjectPerHour", "potentiallyThresholdedRequestsPerHour",
                                            "tokensPerProjectPerHour"]
    assert small["propertyQuota"]["tokensPerDay"] == {"consumed": 1, "remaining": 200_000 - 2}
    assert small["propertyQuota"]["tokensPerProjectPerHour"] == {"consumed": 1, "remaining": 14_000 - 2}
    assert small["propertyQuota"]["concurrentRequests"] == {"consumed": 0, "remaining": 10}
    assert len(big["rows"]) == 25_000  # a bigger answer costs more: 1 + rows // 10,000 tokens
    assert big["propertyQuota"]["tokensPerDay"] == {"consumed": 3, "remaining": 200_000 - 5}


def test_spent_daily_tokens_refuse_until_reset_and_early_retries_are_violations(ga: EmulatorProcess):
    ga.set_faults(ga4_quota={"tokens_per_day": 3, "cost_per_request": 1, "day_reset_s": 3})
    with client(ga) as http:
        served = [http.post(RUN, json=report("2024-03-01", limit=5, returnPropertyQuota=True)) for _ in range(3)]
        refused = http.post(RUN, json=report("2024-03-01", limit=5))
        in_flight = http.post(RUN, json=report("2024-03-01", limit=5))  # within the in-flight grace
        time.sleep(0.3)
        early = http.get(f"/v1beta/properties/{PROP}/metadata")  # every request to the property is refused
        other = http.post(f"/v1beta/properties/{OTHER}:runReport", json=report("2024-03-01", limit=5))
        state = ga.admin("GET", "/_emulator/ga4/state")["quota"][PROP]["tokensPerDay"]
        time.sleep(state["reset_in_s"] + 0.05)
        after = http.post(RUN, json=report("2024-03-01", limit=5))
    assert [r.json()["propertyQuota"]["tokensPerDay"]["remaining"] for r in served] == [2, 1, 0]
    exhausted = google(429, "RESOURCE_EXHAUSTED", "Exhausted property tokens per day.")
    assert refused.status_code == in_flight.status_code == early.status_code == 429
    assert refused.json() == in_flight.json() == early.json() == exhausted
    assert other.status_code == 200 and after.status_code == 200 and state["used"] == 3
    log = ga.log()
    assert [e["violation"] for e in log] == [False] * 5 + [True, False, False]
    assert [e["note"] for e in log].count("quota-exhausted") == 3
    stats = ga.stats()
    assert stats["quota_refusals"] == 3 and stats["violations"] == 1


@pytest.mark.parametrize(("quota", "message"), [
    ({"tokens_per_hour": 2}, "Exhausted property tokens per hour."),
    ({"tokens_per_project_per_hour": 2}, "Exhausted property tokens for a project per hour."),
])
def test_hourly_token_pools_refuse_with_their_messages(ga: EmulatorProcess, quota: dict[str, int], message: str):
    ga.set_faults(ga4_quota=quota)
    with client(ga) as http:
        answers = [http.post(RUN, json=report("2024-03-01", limit=5)) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[2].json() == google(429, "RESOURCE_EXHAUSTED", message)


def test_concurrency_server_error_and_thresholded_quotas(ga: EmulatorProcess):
    ga.set_faults(ga4_quota={"concurrent_requests": 1}, latency_ms=300)
    with ThreadPoolExecutor(2) as pool:
        pair = list(pool.map(lambda _: httpx.post(f"{ga.url}{RUN}", json=report("2024-03-01", limit=5),
                                                  headers={"Authorization": f"Bearer {TOKEN}"}), range(2)))
    assert sorted(a.status_code for a in pair) == [200, 429]  # the second arrived while the first slept
    assert next(a for a in pair if a.status_code == 429).json()["error"]["message"] == (
        "Exhausted concurrent requests quota.")

    ga.set_faults(latency_ms=None, ga4_quota={"server_errors_per_hour": 2},
                  errors_5xx={"every": 1, "status": 500, "count": 2})
    with client(ga) as http:
        answers = [http.post(RUN, json=report("2024-03-01", limit=5)) for _ in range(3)]
    assert [a.status_code for a in answers] == [500, 500, 429]
    assert answers[0].json() == google(500, "INTERNAL", "Internal error encountered.")
    assert answers[2].json()["error"]["message"] == "Exhausted server errors quota."

    ga.set_faults(ga4_quota={"thresholded_requests_per_hour": 1})
    demographic = report("2024-03-01", dimensions=["userAgeBracket"], metrics=["activeUsers"])
    with client(ga) as http:
        first = http.post(RUN, json=demographic)
        second = http.post(RUN, json=demographic)
        plain = http.post(RUN, json=report("2024-03-01", limit=5))
    assert first.json()["metadata"]["subjectToThresholding"] is True
    assert second.status_code == 429 and plain.status_code == 200
    assert second.json()["error"]["message"] == "Exhausted potentially thresholded requests quota."


def test_quota_fault_is_validated(ga: EmulatorProcess):
    with pytest.raises(EmulatorError, match="ga4_quota"):
        ga.set_faults(ga4_quota={"tokens_per_dya": 5})
    with pytest.raises(EmulatorError, match="day_reset_s"):
        ga.set_faults(ga4_quota={"day_reset_s": 0})


# -- auth -----------------------------------------------------------------------------------------------

def test_service_account_jwt_flow_end_to_end(ga: EmulatorProcess, keys: tuple[rsa.RSAPrivateKey, Path]):
    now = int(time.time())
    claims = {"iss": SERVICE_ACCOUNT, "scope": "https://www.googleapis.com/auth/analytics.readonly",
              "aud": f"{ga.url}/oauth/token", "iat": now, "exp": now + 3600}
    grant = httpx.post(f"{ga.url}/oauth/token", data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                                                      "assertion": sign(keys[0], claims)})
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = httpx.post(f"{ga.url}/oauth/token", data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                                                       "assertion": sign(stranger, claims)})
    assert grant.status_code == 200 and grant.json()["token_type"] == "Bearer" and grant.json()["expires_in"] > 0
    assert forged.status_code == 400 and forged.json()["error"] == "invalid_grant"
    with client(ga, token=grant.json()["access_token"]) as http:
        answer = http.post(RUN, json=report("2024-03-01", limit=5))
        ga.admin("POST", "/_emulator/oauth/expire")
        expired = http.post(RUN, json=report("2024-03-01", limit=5))
    assert answer.status_code == 200 and len(answer.json()["rows"]) == 5
    assert expired.status_code == 401 and expired.json()["error"]["status"] == "UNAUTHENTICATED"
    assert [e["note"] for e in ga.log()] == ["jwt", "invalid_grant", None, "expired-token"]


# -- freshness ------------------------------------------------------------------------------------------

def test_the_last_two_days_change_as_processing_advances(fresh: EmulatorProcess):
    def day(date: str) -> dict[str, Any]:
        return fresh.admin("GET", "/_emulator/ga4/truth", params={
            "property": PROP, "date": date, "dimensions": "date,country", "metrics": "sessions,totalRevenue"})

    before = {d: day(d) for d in ("2024-06-30", "2024-06-29", "2024-06-28", "2024-06-01")}
    with client(fresh) as http:
        served = http.post(RUN, json=report("yesterday", dimensions=["date", "country"],
                                            metrics=["sessions", "totalRevenue"])).json()
    advanced = fresh.admin("POST", "/_emulator/ga4/advance", json={"generations": 1})
    after = {d: day(d) for d in before}
    assert served["rows"] == before["2024-06-29"]["rows"] and advanced["generation"] == 1
    for date in ("2024-06-30", "2024-06-29"):  # sessions only grow as late hits are processed
        old, new = ([int(values(r, "metricValues")[0]) for r in x[date]["rows"]] for x in (before, after))
        assert sum(new) > sum(old)
    for date in ("2024-06-28", "2024-06-01"):
        assert after[date]["rows"] == before[date]["rows"]

    moved = fresh.admin("POST", "/_emulator/ga4/advance", json={"days": 1, "generations": 0})
    assert moved["today"] == "2024-07-01" and day("today")["rows"][0]["dimensionValues"][0]["value"] == "20240701"
    assert day("2024-06-29")["rows"] != after["2024-06-29"]["rows"]  # two days old now: final
    assert day("2024-06-28")["rows"] == before["2024-06-28"]["rows"]
    with pytest.raises(EmulatorError, match="generations"):
        fresh.admin("POST", "/_emulator/ga4/advance", json={"generations": -1})
