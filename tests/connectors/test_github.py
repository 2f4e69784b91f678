"""The GitHub connector against the GitHub emulator over real HTTP, into real Postgres and Delta, on Ray.

Covers full and incremental syncs of every stream, 429 storms while 16 partitions run, terminal errors
failing fast, malformed pages, quota exhaustion parking a run as `deferred` and its resumption, and
records inserted or updated while pages are read (RELIABILITY tests 9 and 11).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from engine.core.errors import RunDeferred, RunFailed
from tests.emulators.harness import EmulatorProcess
from tests.support.cli import env_for, ipai
from tests.support.github import GH, bronze_table, bronze_uri, issue_truth, loaded, pr_truth, pull_numbers, truth
from tests.support.syncing import sync
from tests.support.truth import assert_exactly_once_per_extraction, bronze_delta, bronze_postgres

pytestmark = pytest.mark.usefixtures("ray_cluster")

TOKEN = "ghp_canary7f3a9c2e51d04b"  # a canary: must never appear in logs, errors or data


@pytest.fixture
def github_env(monkeypatch: pytest.MonkeyPatch, vault) -> None:
    monkeypatch.setenv("IPAI_DEV_MODE", "1")  # the emulator speaks plain HTTP on loopback
    vault.set("github_token", TOKEN)
    monkeypatch.setenv("IPAI_CREDENTIAL_IDLE_S", "20")


def emulator(*args: str) -> EmulatorProcess:
    return EmulatorProcess("github", "--token", TOKEN, *args)


@pytest.fixture
def gh(github_env: None) -> Iterator[EmulatorProcess]:
    with emulator("--repos", "2", "--issues-per-repo", "1200", "--commits-per-repo", "150") as e:
        yield e


def spec_text(url: str, repos: list[str], *, streams: list[str] | None = None, extra: str = "") -> str:
    listed = "".join(f"\n  - name: {s}" for s in streams) if streams else ""
    return f"""
name: gh
source_type: github
auth: {{type: bearer, token: {{secret: github_token}}}}
source:
  base_url: {url}
  repos: [{", ".join(repos)}]
  pages_per_partition: 3
  lookback_s: 0
{"" if "rate_limit" in extra else "  rate_limit: {requests_per_second: 200, burst: 20}"}
{extra}
{"streams:" + listed if listed else ""}
tuning:
  commit_rows: 2000
"""


def cursor(database: Any, stream: str) -> Any:
    with psycopg.connect(database.url) as conn:
        row = conn.execute("select state_json->>'value' from connector_state where kind = 'cursor' and stream = %s",
                           (stream,)).fetchone()
    return row[0] if row else None


REPOS = ["acme/repo1", "acme/repo2"]


def test_full_then_incremental_sync_of_every_stream(gh, settings, database):
    first = sync(settings, database, spec_text(gh.url, REPOS))
    assert first.status == "succeeded"
    assert first.rows_by_stream["repositories"] == 2
    assert loaded(database, "issues") == issue_truth(gh, REPOS)  # pull requests dropped from issues
    assert pull_numbers(database) == pr_truth(gh, REPOS)
    assert first.rows_by_stream["commits"] == 300
    assert first.rows_by_stream["issue_comments"] > 0
    for stream in ("issues", "pull_requests", "issue_comments", "commits"):
        table = bronze_delta(bronze_uri(settings.lakehouse_uri, stream))
        assert table.num_rows == first.rows_by_stream[stream]
        assert_exactly_once_per_extraction(table, ("sha",) if stream == "commits" else ("id",))
        assert cursor(database, stream) is not None
    # Full reads of large repositories went out in parallel page ranges, each page fetched once.
    pages = Counter((e["path"], e["query"].get("page")) for e in gh.log() if e["path"].endswith("/issues"))
    assert max(pages.values()) == 1 and len(pages) >= 2 * 12

    gh.clear_log()
    gh.admin("POST", "/_emulator/github/touch", json={"repo": "acme/repo1", "numbers": [5, 6, 7, 8, 9, 10]})
    gh.admin("POST", "/_emulator/github/insert", json={"repo": "acme/repo2", "count": 4})
    second = sync(settings, database, spec_text(gh.url, REPOS))
    assert second.status == "succeeded"
    assert issue_truth(gh, REPOS) <= loaded(database, "issues")  # every current version is in bronze
    assert pr_truth(gh, REPOS) <= pull_numbers(database)
    assert second.rows_by_stream["issues"] + second.rows_by_stream["pull_requests"] == 10
    issue_requests = [e for e in gh.log() if e["path"].endswith("/issues")]
    assert issue_requests and all(e["query"].get("since") and e["query"].get("sort") == "updated"
                                  for e in issue_requests)
    pull_requests = [e for e in gh.log() if e["path"].endswith("/pulls")]
    assert len(pull_requests) == 2  # newest-updated first, stopped below the cursor on the first page


def test_429_storm_with_16_partitions_keeps_the_budget_and_retry_after(github_env, settings, database):
    repos = [f"acme/repo{i}" for i in range(1, 5)]
    rate = 40
    extra = f"  rate_limit: {{requests_per_second: {rate}, burst: 5}}\n  concurrency: 4"
    with emulator("--repos", "4", "--issues-per-repo", "1200") as gh:
        # Requests already on the wire when a 429 is sent are refused too, but they are not violations:
        # the emulator's default in-flight grace (250 ms) tells them apart from requests sent after it.
        gh.set_faults(storm={"every": 5, "status": 429, "retry_after": 1, "count": 6},
                      errors_5xx={"every": 9, "status": 502, "count": 4})
        result = sync(settings, database, spec_text(gh.url, repos, streams=["issues"], extra=extra))
        stats, log, expected = gh.stats(), gh.log(), issue_truth(gh, repos)
    assert result.status == "succeeded" and result.partitions == 16
    assert stats["by_note"].get("storm", 0) == 6 and stats["by_status"].get("502", 0) == 4, stats
    assert stats["violations"] == 0, "a request came before the Retry-After it was given had passed"
    times = sorted(e["t"] for e in log if e["path"].endswith("/issues"))
    worst = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert worst <= rate + 5, f"{worst} requests in one second against a budget of {rate}/s (burst 5)"
    assert loaded(database, "issues") == expected


def test_a_retry_after_holds_requests_whose_turn_was_reserved_before_it(github_env, settings, database):
    # At 2 requests/s a caller's turn is reserved up to a second or two ahead. A 429 answered to another
    # partition meanwhile must hold it too: it goes after the Retry-After, not at its reserved time.
    extra = "  rate_limit: {requests_per_second: 2, burst: 1}\n  concurrency: 4\n  pages_per_partition: 1"
    text = spec_text("URL", ["acme/repo1", "acme/repo2"], streams=["issues"], extra=extra)
    text = text.replace("  pages_per_partition: 3\n", "")
    with emulator("--repos", "2", "--issues-per-repo", "600") as gh:
        gh.set_faults(storm={"every": 6, "status": 429, "retry_after": 3, "count": 1})
        result = sync(settings, database, text.replace("URL", gh.url))
        stats, expected = gh.stats(), issue_truth(gh, ["acme/repo1", "acme/repo2"])
    assert result.status == "succeeded" and result.partitions == 12
    assert stats["by_note"].get("storm", 0) == 1, stats
    assert stats["violations"] == 0, "a request reserved before the 429 went before its Retry-After had passed"
    assert loaded(database, "issues") == expected


def test_terminal_errors_fail_fast_with_endpoint_status_and_message(gh, settings, database):
    with pytest.raises(RunFailed) as failed:
        sync(settings, database, spec_text(gh.url, ["acme/repo1", "acme/missing"], streams=["issues"]))
    message = str(failed.value)
    assert "/repos/acme/missing/issues" in message and "404" in message and "Not Found" in message
    assert TOKEN not in message
    missing = [e for e in gh.log() if "missing" in e["path"]]
    assert len(missing) == 1, "a 404 must not be retried"
    with psycopg.connect(database.url) as conn:
        status, error = conn.execute("select status, error from connector_runs").fetchone()
    assert status == "failed" and "acme/missing" in error


def test_malformed_page_fails_its_partition_and_keeps_committed_ones(gh, settings, database):
    text = spec_text(gh.url, REPOS, streams=["issues"], extra="  concurrency: 1")
    gh.set_faults(truncate={"every": 12, "count": 1})
    with pytest.raises(RunFailed, match=r"malformed JSON.*the body begins"):
        sync(settings, database, text)
    with psycopg.connect(database.url) as conn:
        failed_run, kept_rows = conn.execute(
            "select r.id::text, coalesce(sum(s.rows), 0) from connector_runs r left join connector_state s"
            " on s.run_id = r.id and s.kind = 'partition' where r.status = 'failed' group by r.id").fetchone()
    gh.clear_faults()
    again = sync(settings, database, text)
    assert again.status == "succeeded"
    assert loaded(database, "issues") == issue_truth(gh, REPOS)
    bronze = bronze_postgres(database.url, bronze_table("issues"))
    assert_exactly_once_per_extraction(bronze, ("id",))
    # What the failed run recorded stayed (its bronze rows may be more: data written but not yet recorded
    # when it failed is kept too, and skipped on replay), and the next run read only the rest.
    assert bronze.column("_ipai_run_id").to_pylist().count(failed_run) >= kept_rows
    assert again.rows_by_stream["issues"] == bronze.num_rows - kept_rows


def test_quota_exhaustion_defers_the_run_and_the_next_run_resumes(gh, settings, database):
    text = spec_text(gh.url, REPOS, streams=["issues"], extra="  concurrency: 2\n  retry: {max_wait_s: 1}")
    gh.set_faults(primary_limit={"limit": 14, "window_s": 6, "status": 403})
    with pytest.raises(RunDeferred) as deferred:
        sync(settings, database, text)
    assert "quota" in str(deferred.value) or "limit" in str(deferred.value)
    with psycopg.connect(database.url) as conn:
        status, until = conn.execute("select status, deferred_until from connector_runs").fetchone()
        kept = conn.execute("select count(*) from connector_state where kind = 'partition'").fetchone()[0]
    assert status == "deferred" and until is not None
    assert kept > 0, "partitions read before the quota ran out stay committed"
    time.sleep(max(0.0, deferred.value.until - time.time()) + 0.5)  # resume after the reset, as scheduled
    gh.clear_faults()
    resumed = sync(settings, database, text)
    assert resumed.status == "succeeded"
    assert loaded(database, "issues") == issue_truth(gh, REPOS)
    assert_exactly_once_per_extraction(bronze_postgres(database.url, bronze_table("issues")), ("id",))
    assert_exactly_once_per_extraction(bronze_delta(bronze_uri(settings.lakehouse_uri, "issues")), ("id",))


def test_records_inserted_and_updated_between_pages_are_not_lost(gh, settings, database):
    text = spec_text(gh.url, REPOS, streams=["issues"])
    # A full read in parallel page ranges while new issues arrive: they land on the last, open range.
    gh.set_faults(insert_between_pages={"every": 4, "count": 7, "times": 3})
    sync(settings, database, text)
    assert issue_truth(gh, REPOS) <= loaded(database, "issues")
    # While the incremental read pages through, issues move (updated) and new ones arrive.
    gh.admin("POST", "/_emulator/github/touch", json={"repo": "acme/repo1", "numbers": list(range(1, 400))})
    gh.set_faults(touch_between_pages={"every": 2, "count": 5, "times": 6},
                  insert_between_pages={"every": 3, "count": 3, "times": 4})
    result = sync(settings, database, text)
    assert result.status == "succeeded"
    gh.clear_faults()
    # Whatever moved during the read is caught by this run or, at the latest, by the next.
    sync(settings, database, text)
    assert issue_truth(gh, REPOS) <= loaded(database, "issues")


def test_plain_http_outside_dev_mode_is_refused_before_any_request(gh, settings, database, monkeypatch):
    monkeypatch.delenv("IPAI_DEV_MODE")
    with pytest.raises(RunFailed, match=r"loopback.*dev mode"):
        sync(settings, database, spec_text(gh.url, REPOS, streams=["issues"]))
    assert gh.log() == []


def test_missing_secret_fails_before_any_request_naming_it(gh, settings, database, vault):
    vault.delete("github_token")
    with pytest.raises(RunFailed, match=r"secret 'github_token' is not set.*ipai secret set github_token"):
        sync(settings, database, spec_text(gh.url, REPOS, streams=["issues"]))
    assert gh.log() == []


GENERIC = """
name: gh
source_type: http
auth: {{type: bearer, token: {{secret: github_token}}}}
source:
  base_url: {url}
  streams:
    - name: issues
      path: /repos/{{repo}}/issues
      params: {{state: all, sort: updated, direction: asc}}
      primary_key: [id]
      partitions: {{type: values, field: repo, values: [acme/repo1]}}
      paginator: {{type: page_number, page_param: page, size_param: per_page, size: 100}}
      incremental:
        cursor_field: updated_at
        param: since
{keyset}
"""
KEYSET = "        paginator: {type: cursor_param, param: since, field: updated_at, size: 100}"


@pytest.mark.parametrize("paging", ["naive page numbers", "keyset on the cursor"])
def test_pages_shifting_under_the_reader_lose_rows_only_with_naive_paging(gh, settings, database, paging):
    """RELIABILITY 11: the verifier must catch the naive paginator, or it could not catch anything."""
    text = GENERIC.format(url=gh.url, keyset=KEYSET if paging.startswith("keyset") else "")
    sync(settings, database, text)
    # 600 issues updated in one second: their cursor value ties across six pages.
    gh.admin("POST", "/_emulator/github/touch", json={"repo": "acme/repo1", "numbers": list(range(1, 601))})
    time.sleep(1.1)  # timestamps have whole seconds: what is touched below must sort after those 600
    # While the next incremental run pages through those 600, already-read issues keep being updated:
    # each moves to the end of the `sort=updated` order and shifts every later issue one place back.
    gh.set_faults(touch_between_pages={"every": 1, "count": 3, "times": 4})
    sync(settings, database, text)
    missing = issue_truth(gh, ["acme/repo1"]) - loaded(database, "issues")
    if paging.startswith("naive"):
        assert missing, "the shifting pages should have made the naive paginator skip issues"
    else:
        assert not missing, f"{len(missing)} issues skipped"


def test_the_token_never_reaches_logs_errors_or_data(gh, settings, database):
    """RELIABILITY 18 (for what exists before the Vault): grep every sink for the canary token."""
    gh.set_faults(storm={"every": 6, "status": 403, "retry_after": 1, "count": 2})
    sync(settings, database, spec_text(gh.url, REPOS, streams=["issues", "repositories"]))
    gh.clear_faults()
    with pytest.raises(RunFailed):
        sync(settings, database, spec_text(gh.url, ["acme/repo1", "acme/nope"], streams=["issues"]))
    with psycopg.connect(database.url) as conn:
        tables = [f"{s}.{t}" for s, t in conn.execute(
            "select table_schema, table_name from information_schema.tables"
            " where table_schema in ('public', %s)", (GH.schema("bronze"),)).fetchall()]
        assert bronze_table("issues") in tables, "the search missed bronze"
        for table in tables:
            hits = conn.execute(f"select count(*) from {table} t where t::text like %s", (f"%{TOKEN}%",)).fetchone()
            assert hits[0] == 0, f"the token is in {table}"
    lakehouse = Path(settings.lakehouse_uri)
    for path in lakehouse.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), f"the token is in {path}"


def test_unchanged_resources_cost_a_304_and_no_rows(gh, settings, database):
    """ETag conditional requests (github.md s.7): a 304 re-lands nothing and does not count against the limit."""
    text = spec_text(gh.url, REPOS, streams=["repositories", "pull_requests"])
    sync(settings, database, text)  # full read: pull requests in page ranges (no ETag kept for those)
    sync(settings, database, text)  # incremental: each repository's first page of pulls is all there is
    gh.clear_log()
    third = sync(settings, database, text)
    assert third.rows_by_stream == {"repositories": 0, "pull_requests": 0}
    log = gh.log()
    assert len(log) == 4 and all(e["status"] == 304 and e["note"] == "etag-hit" for e in log), log
    t = truth(gh, "acme/repo2")
    prs = [n for n, pr in zip(t["numbers"], t["pull_request"]) if pr][:3]
    gh.admin("POST", "/_emulator/github/touch", json={"repo": "acme/repo2", "numbers": prs})
    fourth = sync(settings, database, text)
    assert fourth.rows_by_stream["pull_requests"] == 3  # the changed repository's first page is new
    assert pr_truth(gh, REPOS) <= pull_numbers(database)


def test_an_organisation_lists_its_repositories_and_each_becomes_a_partition(gh, settings, database):
    """Parent-to-child partitioning: the org's repositories are read while planning, then issues per repo."""
    text = spec_text(gh.url, REPOS, streams=["repositories", "issues"]).replace(
        "  repos: [acme/repo1, acme/repo2]", "  org: acme")
    result = sync(settings, database, text)
    assert result.rows_by_stream["repositories"] == 2
    assert loaded(database, "issues") == issue_truth(gh, REPOS)
    assert set(bronze_postgres(database.url, bronze_table("issues")).column("repo").to_pylist()) == set(REPOS)
    assert any(e["path"] == "/orgs/acme/repos" for e in gh.log())


def test_a_refused_token_fails_fast_with_the_api_message(gh, settings, database, vault):
    vault.set("github_token", "ghp_not_a_valid_token_0000")
    with pytest.raises(RunFailed, match=r"401: Bad credentials.*check it and store it again") as failed:
        sync(settings, database, spec_text(gh.url, ["acme/repo1"], streams=["issues"]))
    assert "ghp_not_a_valid_token_0000" not in str(failed.value)
    assert len(gh.log()) == 1, "a refused credential must not be retried"


def test_cli_stores_the_secret_and_reports_a_deferred_run_without_a_traceback(gh, settings, tmp_path):
    env = env_for(settings)
    env["IPAI_DEV_MODE"] = "1"
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "secret", "set", "github_token"], input=TOKEN + "\n",
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and TOKEN not in proc.stdout + proc.stderr
    assert [line.split()[0] for line in ipai("secret", "list", env=env).stdout.splitlines()] == ["github_token"]
    spec = tmp_path / "gh.yaml"
    spec.write_text(spec_text(gh.url, REPOS, streams=["issues"], extra="  concurrency: 2\n  retry: {max_wait_s: 1}"))
    gh.set_faults(primary_limit={"limit": 10, "window_s": 30, "status": 403})
    proc = ipai("submit", str(spec), "--wait", env=env, check=False)
    assert proc.returncode == 75, proc.stderr
    assert "deferred:" in proc.stderr and "run it again after that time" in proc.stderr
    assert "Traceback" not in proc.stderr and TOKEN not in proc.stderr
