"""A credential's actor outlives the run that started it: its token exchanges read and rotate the refresh token
through the run that asks, since a worker's secret reads open only for a run it holds a live claim on
(20261207120000_claimed_runs.sql). Two runs of one instance, each claimed by a worker, share the actor; the
second run's exchanges go through its own claim, not the first run's (which has ended).
"""

from __future__ import annotations

import pytest

from connectors.specload import parse_spec
from engine.controlplane import records
# The OAuth emulator and its fixtures as RELIABILITY test 10 sets them up (fixtures are found by name).
from tests.connectors.test_http_auth import FIRST_REFRESH, REPOS, dev_mode, oauth_gh, oauth_spec  # noqa: F401
from tests.controlplane.test_rpc import serve_one
from tests.emulators.harness import EmulatorProcess
from tests.support.databases import migrated
from tests.support.github import issue_truth, loaded
from tests.support.rpc import rpc

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_a_second_claimed_run_exchanges_tokens_through_its_own_claim(oauth_gh: EmulatorProcess,  # noqa: F811
                                                                     settings, database, vault):
    gh = oauth_gh
    gh.set_faults(token_ttl_s=1, latency_ms=300, token_latency_ms=200)  # every run outlives its first tokens
    text = oauth_spec(gh.url)
    migrated(database)
    with database.connect() as conn:
        records.register(conn, parse_spec(text), text)
    outcomes = []
    for _ in range(2):
        with database.connect() as conn:
            run_id = rpc(conn, "select public.connector_run(%s)", "gh")["run_id"]
        serve_one(settings)
        with database.connect() as conn:
            run = rpc(conn, "select public.connector_status(%s)", run_id)["run"]
            rotated_by = [f["worker"] for (f,) in conn.execute(
                "select fields from connector_run_logs where run_id = %s and event = 'secret.rotated'", (run_id,))]
        outcomes.append((run["status"], run["error"], len(rotated_by)))
    assert [o[:2] for o in outcomes] == [("succeeded", None)] * 2, outcomes
    assert all(n >= 1 for _, _, n in outcomes), f"each run rotated the refresh token through its claim: {outcomes}"
    stats = gh.stats()
    assert stats["by_note"].get("invalid_grant", 0) == 0, "a spent refresh token was used again"
    assert vault.get("gh_refresh") not in (None, FIRST_REFRESH) and stats["valid_refresh_tokens"] == 1
    assert loaded(database, "issues") == issue_truth(gh, REPOS)
