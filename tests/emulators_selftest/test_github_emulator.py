"""The GitHub emulator keeps the wire contract (../shared/api-contracts/github.md) over real HTTP."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.emulators.harness import EmulatorError, EmulatorProcess

pytestmark = pytest.mark.integration  # every test here talks to an emulator process

TOKEN = "selftest-token"
CLIENT = ("selftest-client", "selftest-secret")
SERVICE_ACCOUNT = "loader@selftest.iam.example"
ISSUES = 250
COMMITS = 60


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[rsa.RSAPrivateKey, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path_factory.mktemp("keys") / "service-account.pub.pem"
    pem.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, pem


def _start(pem: Path, *extra: str) -> EmulatorProcess:
    return EmulatorProcess("github", "--token", TOKEN, "--repos", "2", "--issues-per-repo", str(ISSUES),
                           "--commits-per-repo", str(COMMITS), "--seed", "7", "--client-id", CLIENT[0],
                           "--client-secret", CLIENT[1], "--refresh-token", "refresh-0",
                           "--service-account-email", SERVICE_ACCOUNT, "--service-account-public-key", str(pem),
                           *extra)


@pytest.fixture(scope="module")
def shared(keys: tuple[rsa.RSAPrivateKey, Path]) -> Iterator[EmulatorProcess]:
    with _start(keys[1]) as emulator:
        yield emulator


@pytest.fixture
def gh(shared: EmulatorProcess) -> EmulatorProcess:
    """The module's emulator with no faults and an empty log; its data is never mutated."""
    shared.clear_faults()
    shared.clear_log()
    return shared


@pytest.fixture
def fresh(keys: tuple[rsa.RSAPrivateKey, Path]) -> Iterator[EmulatorProcess]:
    """An emulator of its own, for tests that change data or spend refresh tokens."""
    with _start(keys[1]) as emulator:
        yield emulator


def client(emulator: EmulatorProcess, token: str | None = TOKEN) -> httpx.Client:
    headers = {"User-Agent": "emulator-selftest", "Accept": "application/vnd.github+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(base_url=emulator.url, headers=headers, timeout=30)


def walk(http: httpx.Client, url: str, **params: Any) -> tuple[list[dict[str, Any]], list[httpx.Response]]:
    """Follow rel="next" from `url` to the end; return every item and every response."""
    items, responses = [], []
    next_url: str | None = str(http.build_request("GET", url, params=params).url)
    while next_url:
        response = http.get(next_url)
        assert response.status_code == 200, response.text
        items += response.json()
        responses.append(response)
        next_url = response.links.get("next", {}).get("url")
    return items, responses


def truth(emulator: EmulatorProcess, repo: str = "acme/repo1", state: str = "all") -> dict[str, Any]:
    return emulator.admin("GET", "/_emulator/github/truth", params={"repo": repo, "state": state})


def sign(key: rsa.RSAPrivateKey, claims: dict[str, Any]) -> str:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    signing_input = f"{b64(json.dumps({'alg': 'RS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()))}"


# -- listing, paging and filters ------------------------------------------------------------------------

def test_link_paging_collects_every_issue_exactly_once(gh: EmulatorProcess):
    with client(gh) as http:
        items, responses = walk(http, "/repos/acme/repo1/issues", state="all", sort="updated", direction="asc",
                                per_page=30)
    numbers = [i["number"] for i in items]
    assert sorted(numbers) == truth(gh)["numbers"] and len(numbers) == len(set(numbers)) == ISSUES
    stamps = [i["updated_at"] for i in items]
    assert stamps == sorted(stamps)
    first, middle, last = responses[0].links, responses[1].links, responses[-1].links
    assert set(first) == {"next", "last"} and set(middle) == {"prev", "next", "last", "first"}
    assert set(last) == {"prev", "first"} and len(responses) == 9
    assert all("per_page=30" in link["url"] and "sort=updated" in link["url"] for link in middle.values())
    assert middle["last"]["url"].startswith(gh.url + "/repos/acme/repo1/issues?")
    # Blocks of issues share one updated_at second, so some tie groups straddle a page boundary.
    boundaries = [(a.json()[-1]["updated_at"], b.json()[0]["updated_at"]) for a, b in zip(responses, responses[1:])]
    assert any(x == y for x, y in boundaries)


def test_one_page_has_no_link_header_and_past_the_end_is_an_empty_list(gh: EmulatorProcess):
    with client(gh) as http:
        pulls = http.get("/repos/acme/repo1/pulls", params={"state": "all", "per_page": 100})
        beyond = http.get("/repos/acme/repo1/issues", params={"state": "all", "per_page": 100, "page": 9})
    assert pulls.status_code == 200 and "link" not in pulls.headers and 0 < len(pulls.json()) < 100
    assert beyond.status_code == 200 and beyond.json() == []


def test_per_page_is_clamped_to_1_through_100_and_defaults_to_30(gh: EmulatorProcess):
    with client(gh) as http:
        sizes = {p: len(http.get("/repos/acme/repo1/issues", params={"state": "all", "per_page": p}).json())
                 for p in ("500", "0", "abc")}
        default = http.get("/repos/acme/repo1/issues", params={"state": "all"})
    assert sizes == {"500": 100, "0": 1, "abc": 30} and len(default.json()) == 30


def test_defaults_are_open_issues_newest_first(gh: EmulatorProcess):
    with client(gh) as http:
        items, _ = walk(http, "/repos/acme/repo1/issues", per_page=100)
    assert {i["state"] for i in items} == {"open"}
    assert [i["number"] for i in items] == sorted(truth(gh, state="open")["numbers"], reverse=True)


def test_since_keeps_issues_updated_at_or_after_it(gh: EmulatorProcess):
    expected = truth(gh)
    since = sorted(expected["updated_at"])[ISSUES // 2]
    with client(gh) as http:
        items, _ = walk(http, "/repos/acme/repo1/issues", state="all", since=since, per_page=100)
        bad = http.get("/repos/acme/repo1/issues", params={"since": "yesterday"})
    assert items and all(i["updated_at"] >= since for i in items)
    assert sorted(i["number"] for i in items) == sorted(
        n for n, u in zip(expected["numbers"], expected["updated_at"]) if u >= since)
    assert any(i["updated_at"] == since for i in items)  # inclusive
    assert bad.status_code == 422 and bad.json()["message"] == "Validation Failed"


def test_pull_requests_are_flagged_in_issues_and_listed_in_pulls(gh: EmulatorProcess):
    with client(gh) as http:
        issues, _ = walk(http, "/repos/acme/repo1/issues", state="all", per_page=100)
        pulls, _ = walk(http, "/repos/acme/repo1/pulls", state="all", sort="updated", per_page=100)
    flagged = {i["number"] for i in issues if "pull_request" in i}
    assert 0.1 < len(flagged) / len(issues) < 0.3
    assert {p["number"] for p in pulls} == flagged
    stamps = [p["updated_at"] for p in pulls]
    assert stamps == sorted(stamps)  # sort=updated ascends unless told otherwise
    assert {"merged_at", "draft", "closed_at"} <= set(pulls[0]) and pulls[0]["base"]["ref"] == "main"
    assert pulls[0]["head"]["sha"] and "since" not in str(pulls[0])


def test_comments_commits_and_repositories(gh: EmulatorProcess):
    with client(gh) as http:
        comments, _ = walk(http, "/repos/acme/repo1/issues/comments", per_page=100)
        recent, _ = walk(http, "/repos/acme/repo1/issues/comments", since=comments[len(comments) // 2]["updated_at"],
                         sort="updated", direction="asc", per_page=100)
        commits, _ = walk(http, "/repos/acme/repo2/commits", per_page=25)
        window, _ = walk(http, "/repos/acme/repo2/commits", since=commits[40]["commit"]["author"]["date"],
                         until=commits[10]["commit"]["author"]["date"])
        repos = http.get("/orgs/acme/repos").json()
        repo = http.get("/repos/acme/repo2").json()
        missing = http.get("/orgs/other/repos")
    assert [c["id"] for c in comments] == sorted(c["id"] for c in comments)  # ascending id by default
    assert all(c["updated_at"] >= comments[len(comments) // 2]["updated_at"] for c in recent)
    assert [c["updated_at"] for c in recent] == sorted(c["updated_at"] for c in recent)
    assert len(commits) == COMMITS and commits[0]["commit"]["author"]["date"] > commits[-1]["commit"]["author"]["date"]
    assert [c["sha"] for c in window] == [c["sha"] for c in commits[10:41]]
    assert commits[0]["parents"] == [{"sha": commits[1]["sha"]}]
    assert [r["full_name"] for r in repos] == ["acme/repo2", "acme/repo1"]  # newest created first
    assert repo["full_name"] == "acme/repo2" and repo["open_issues_count"] > 0
    assert missing.status_code == 404


def test_records_look_like_github_and_are_about_half_a_kilobyte(gh: EmulatorProcess):
    with client(gh) as http:
        items = http.get("/repos/acme/repo1/issues", params={"state": "all", "per_page": 100}).json()
    assert {"id", "node_id", "number", "title", "state", "user", "labels", "comments", "created_at", "updated_at",
            "closed_at", "body", "repository_url"} <= set(items[0])
    assert 400 < sum(len(json.dumps(i, separators=(",", ":"))) for i in items) / len(items) < 560
    assert all(i["updated_at"].endswith("Z") and len(i["updated_at"]) == 20 for i in items)


# -- auth, headers and rate limits ----------------------------------------------------------------------

def test_auth_user_agent_and_unknown_repo_errors(gh: EmulatorProcess):
    with client(gh, token=None) as anonymous, client(gh, token="wrong") as wrong, client(gh) as http:
        no_auth = anonymous.get("/repos/acme/repo1/issues")
        bad = wrong.get("/repos/acme/repo1/issues")
        request = http.build_request("GET", "/repos/acme/repo1/issues")
        del request.headers["User-Agent"]
        no_agent = http.send(request)
        unknown = http.get("/repos/acme/nope/issues")
    assert no_auth.status_code == 401 and no_auth.json()["message"] == "Requires authentication"
    assert bad.status_code == 401 and bad.json()["message"] == "Bad credentials"
    assert no_agent.status_code == 403 and "User-Agent" in no_agent.json()["message"]
    assert unknown.status_code == 404 and unknown.json() == {"message": "Not Found",
                                                             "documentation_url": "https://docs.github.com/rest"}
    entries = gh.log()
    assert [e["status"] for e in entries] == [401, 401, 403, 404]
    assert entries[1]["credential"] and "wrong" not in json.dumps(entries) and TOKEN not in json.dumps(entries)


def test_etag_answers_304_without_spending_quota(gh: EmulatorProcess):
    with client(gh) as http:
        first = http.get("/repos/acme/repo1/issues", params={"state": "all"})
        again = http.get("/repos/acme/repo1/issues", params={"state": "all"},
                         headers={"If-None-Match": first.headers["etag"]})
        status = http.get("/rate_limit").json()["resources"]["core"]
    assert again.status_code == 304 and again.content == b""
    assert again.headers["x-ratelimit-remaining"] == first.headers["x-ratelimit-remaining"]
    assert status["remaining"] == int(first.headers["x-ratelimit-remaining"])  # /rate_limit is free too
    for name in ("limit", "remaining", "used", "reset", "resource"):
        assert f"x-ratelimit-{name}" in first.headers
    assert [e["note"] for e in gh.log()] == [None, "etag-hit", None]


def test_storm_sends_retry_after_and_logs_early_retries_as_violations(gh: EmulatorProcess):
    gh.set_faults(storm={"every": 2, "status": 429, "retry_after": 1, "count": 1})
    with client(gh) as http:
        ok = http.get("/repos/acme/repo1")
        limited = http.get("/repos/acme/repo1")
        in_flight = http.get("/repos/acme/repo1")  # within the in-flight grace: refused, not a violation
        time.sleep(0.3)
        early = http.get("/repos/acme/repo1")
        time.sleep(float(limited.headers["retry-after"]))
        after = http.get("/repos/acme/repo1")
    assert ok.status_code == 200 and after.status_code == 200
    assert limited.status_code == 429 and limited.headers["retry-after"] == "1"
    assert "secondary rate limit" in limited.json()["message"]
    assert in_flight.status_code == early.status_code == 429
    assert [e["violation"] for e in gh.log()] == [False, False, False, True, False]
    assert gh.stats()["violations"] == 1


def test_storm_can_give_retry_after_as_an_http_date(gh: EmulatorProcess):
    gh.set_faults(storm={"every": 1, "status": 403, "retry_after": "http-date", "seconds": 2, "count": 1})
    with client(gh) as http:
        limited = http.get("/repos/acme/repo1/issues")
    wait = parsedate_to_datetime(limited.headers["retry-after"]).timestamp() - time.time()
    assert limited.status_code == 403 and 1.5 < wait <= 3.0  # whole seconds, rounded up


def test_primary_limit_refuses_until_reset(gh: EmulatorProcess):
    gh.set_faults(primary_limit={"limit": 3, "window_s": 1})
    with client(gh) as http:
        served = [http.get("/repos/acme/repo1") for _ in range(3)]
        refused = http.get("/repos/acme/repo1")
        time.sleep(0.3)
        early = http.get("/repos/acme/repo1")
        status = http.get("/rate_limit")  # free, and answered even while the credential must wait
        time.sleep(max(0.0, int(refused.headers["x-ratelimit-reset"]) - time.time()) + 0.05)
        after = http.get("/repos/acme/repo1")
    assert [r.headers["x-ratelimit-remaining"] for r in served] == ["2", "1", "0"]
    assert status.status_code == 200 and status.json()["rate"]["remaining"] == 0
    assert refused.status_code == 403 and refused.headers["x-ratelimit-remaining"] == "0"
    assert refused.json()["message"].startswith("API rate limit exceeded")
    assert early.status_code == 403 and after.status_code == 200
    assert [e["violation"] for e in gh.log()] == [False] * 4 + [True, False, False]


def test_5xx_truncate_and_latency_faults(gh: EmulatorProcess):
    gh.set_faults(errors_5xx={"every": 2, "status": 502, "count": 1}, truncate={"every": 2, "count": 1},
                  latency_ms=50)
    with client(gh) as http:
        started = time.perf_counter()
        statuses = [http.get("/repos/acme/repo1/issues") for _ in range(4)]
        elapsed = time.perf_counter() - started
    assert [r.status_code for r in statuses] == [200, 502, 200, 200]
    assert statuses[1].json() == {"message": "Server Error"}
    with pytest.raises(json.JSONDecodeError):
        statuses[2].json()  # the second 200 answer carries half its body
    statuses[3].json()
    assert elapsed >= 0.2
    assert gh.stats()["by_note"] == {"5xx": 1, "truncated": 1}


def test_unknown_faults_are_refused(gh: EmulatorProcess):
    with pytest.raises(EmulatorError, match="unknown faults"):
        gh.set_faults(strom={"every": 1})
    with pytest.raises(EmulatorError, match="every"):
        gh.set_faults(storm={"every": 0})
    assert gh.admin("GET", "/_emulator/faults") == {}


# -- OAuth -------------------------------------------------------------------------------------------------

def _refresh(emulator: EmulatorProcess, refresh_token: str, secret: str = CLIENT[1]) -> httpx.Response:
    return httpx.post(f"{emulator.url}/oauth/token", data={
        "grant_type": "refresh_token", "client_id": CLIENT[0], "client_secret": secret,
        "refresh_token": refresh_token})


def test_refresh_tokens_rotate_and_a_spent_one_is_invalid_grant(fresh: EmulatorProcess):
    fresh.set_faults(token_ttl_s=1)
    first = _refresh(fresh, "refresh-0")
    reused = _refresh(fresh, "refresh-0")
    wrong_secret = _refresh(fresh, first.json()["refresh_token"], secret="nope")
    second = _refresh(fresh, first.json()["refresh_token"])
    assert first.status_code == 200 and first.json()["token_type"] == "Bearer" and first.json()["expires_in"] == 1
    assert reused.status_code == 400 and reused.json() == {"error": "invalid_grant",
                                                           "error_description": "Token has been expired or revoked."}
    assert wrong_secret.status_code == 401 and wrong_secret.json()["error"] == "invalid_client"
    assert second.status_code == 200 and second.json()["refresh_token"] != first.json()["refresh_token"]
    with client(fresh, token=second.json()["access_token"]) as http:
        assert http.get("/repos/acme/repo1").status_code == 200
        time.sleep(1.1)
        expired = http.get("/repos/acme/repo1")
    assert expired.status_code == 401 and expired.json()["message"] == "Bad credentials"
    assert [e["note"] for e in fresh.log()] == ["refresh", "invalid_grant", "invalid_client", "refresh", None,
                                                "expired-token"]
    fresh.admin("POST", "/_emulator/oauth/revoke")
    assert _refresh(fresh, second.json()["refresh_token"]).json()["error"] == "invalid_grant"
    assert fresh.stats()["valid_refresh_tokens"] == 0


def test_concurrent_refreshes_are_visible_in_stats(fresh: EmulatorProcess):
    fresh.set_faults(token_latency_ms=300)
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: _refresh(fresh, "refresh-0"), range(2)))
    assert sorted(a.status_code for a in answers) == [200, 400]
    stats = fresh.stats()
    assert stats["token_requests"] == 2 and stats["max_concurrent_token_requests"] == 2
    with client(fresh, token=next(a for a in answers if a.status_code == 200).json()["access_token"]) as http:
        assert fresh.admin("POST", "/_emulator/oauth/expire") == {"expired": 1}
        assert http.get("/repos/acme/repo1").status_code == 401
        assert fresh.log()[-1]["note"] == "expired-token"


def test_jwt_bearer_grant_checks_signature_audience_and_lifetime(fresh: EmulatorProcess,
                                                                  keys: tuple[rsa.RSAPrivateKey, Path]):
    key = keys[0]
    now = int(time.time())
    claims = {"iss": SERVICE_ACCOUNT, "scope": "repo", "aud": f"{fresh.url}/oauth/token", "iat": now,
              "exp": now + 3600}
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def grant(assertion: str) -> httpx.Response:
        return httpx.post(f"{fresh.url}/oauth/token", data={
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion})
    good = grant(sign(key, claims))
    forged = grant(sign(stranger, claims))
    wrong_audience = grant(sign(key, {**claims, "aud": "https://oauth2.example/token"}))
    too_long = grant(sign(key, {**claims, "exp": now + 7200}))
    assert good.status_code == 200 and "refresh_token" not in good.json()
    assert forged.status_code == 400 and forged.json() == {"error": "invalid_grant",
                                                           "error_description": "Invalid JWT Signature."}
    assert wrong_audience.json()["error"] == too_long.json()["error"] == "invalid_grant"
    with client(fresh, token=good.json()["access_token"]) as http:
        assert http.get("/repos/acme/repo1/issues").status_code == 200
    assert [e["note"] for e in fresh.log()][:4] == ["jwt", "invalid_grant", "invalid_grant", "invalid_grant"]


# -- data that changes --------------------------------------------------------------------------------

def test_touch_insert_and_delete_change_what_is_listed(fresh: EmulatorProcess):
    touched = fresh.admin("POST", "/_emulator/github/touch", json={"repo": "acme/repo1", "numbers": [5, 6]})
    inserted = fresh.admin("POST", "/_emulator/github/insert", json={"repo": "acme/repo1", "count": 3})
    fresh.admin("POST", "/_emulator/github/delete", json={"repo": "acme/repo1", "numbers": [7]})
    with client(fresh) as http:
        by_update, _ = walk(http, "/repos/acme/repo1/issues", state="all", sort="updated", direction="asc",
                            per_page=100)
        newest = http.get("/repos/acme/repo1/issues", params={"per_page": 3}).json()
    assert inserted == {"numbers": [ISSUES + 1, ISSUES + 2, ISSUES + 3]}
    assert [i["number"] for i in by_update[-5:]] == [5, 6, ISSUES + 1, ISSUES + 2, ISSUES + 3]
    assert by_update[-5]["updated_at"] >= touched["updated_at"]
    assert [i["number"] for i in newest] == [ISSUES + 3, ISSUES + 2, ISSUES + 1]
    assert 7 not in {i["number"] for i in by_update} and truth(fresh)["count"] == ISSUES + 2
    with pytest.raises(EmulatorError, match="no such issue"):
        fresh.admin("POST", "/_emulator/github/touch", json={"repo": "acme/repo1", "numbers": [7]})


def test_pages_shifting_while_read_defeat_an_offset_paginator(fresh: EmulatorProcess):
    fresh.set_faults(insert_between_pages={"every": 2, "count": 5})
    with client(fresh) as http:
        newest_first, _ = walk(http, "/repos/acme/repo1/issues", state="all", per_page=50)
        fresh.set_faults(insert_between_pages=None, touch_between_pages={"every": 2, "count": 3, "times": 2})
        oldest_update_first, _ = walk(http, "/repos/acme/repo1/issues", state="all", sort="updated",
                                      direction="asc", per_page=50)
        fresh.set_faults(touch_between_pages=None, delete_between_pages={"every": 2, "count": 4, "times": 1})
        open_newest_first, _ = walk(http, "/repos/acme/repo2/issues", per_page=50)
    numbers = [i["number"] for i in newest_first]
    assert len(numbers) > len(set(numbers))  # inserts at the front push read issues onto later pages
    assert truth(fresh)["count"] > ISSUES
    # Touching or deleting already-read issues slides unread ones back onto pages already read.
    assert set(truth(fresh)["numbers"]) - {i["number"] for i in oldest_update_first}
    assert set(truth(fresh, "acme/repo2", "open")["numbers"]) - {i["number"] for i in open_newest_first}
    assert {"inserted", "touched", "deleted"} <= {e["note"] for e in fresh.log()}


def test_a_million_issues_start_fast_and_render_deterministically():
    pages = []
    for _ in range(2):
        with EmulatorProcess("github", "--token", TOKEN, "--repos", "1", "--issues-per-repo", "1000000",
                             "--seed", "3") as big, client(big) as http:
            response = http.get("/repos/acme/repo1/issues", params={"state": "all", "sort": "updated",
                                                                    "per_page": 100, "page": 10000})
            assert response.status_code == 200 and len(response.json()) == 100
            assert 'rel="last"' not in response.headers["link"]
            pages.append(response.text.replace(big.url, "BASE"))
    assert pages[0] == pages[1]
