"""Token exchanges against the emulator's OAuth endpoint during real runs (RELIABILITY test 10).

Access tokens expire every second while 8 requests are in flight: one refresh at a time across
every task, each rotated refresh token stored before it is used, and `invalid_grant` failing the run
as needing re-authorisation. A Google-style service account signs its JWT and gets tokens the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from engine.core.errors import RunFailed
from tests.emulators.harness import EmulatorProcess
from tests.support.github import issue_truth, loaded
from tests.support.syncing import sync

pytestmark = pytest.mark.usefixtures("ray_cluster")

CLIENT_SECRET = "csecret-canary-91c0d7"
FIRST_REFRESH = "rtoken-first-5e1b0a"
REPOS = ["acme/repo1", "acme/repo2"]


@pytest.fixture
def dev_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IPAI_DEV_MODE", "1")
    monkeypatch.setenv("IPAI_CREDENTIAL_IDLE_S", "20")


@pytest.fixture
def oauth_gh(dev_mode: None, vault) -> Iterator[EmulatorProcess]:
    vault.set("gh_client_secret", CLIENT_SECRET)
    vault.set("gh_refresh", FIRST_REFRESH)
    with EmulatorProcess("github", "--repos", "2", "--issues-per-repo", "3000", "--client-id", "ipai",
                         "--client-secret", CLIENT_SECRET, "--refresh-token", FIRST_REFRESH) as gh:
        yield gh


def oauth_spec(url: str) -> str:
    return f"""
name: gh
source_type: github
auth:
  type: oauth2_refresh
  token_url: {url}/oauth/token
  client_id: ipai
  client_secret: {{secret: gh_client_secret}}
  refresh_token: {{secret: gh_refresh}}
source:
  base_url: {url}
  repos: [{", ".join(REPOS)}]
  pages_per_partition: 5
  concurrency: 2
streams: [{{name: issues}}]
tuning: {{max_in_flight: 4}}
"""


def test_tokens_expiring_mid_run_are_refreshed_once_at_a_time_and_rotations_stored(oauth_gh, settings, database,
                                                                                   vault):
    gh = oauth_gh
    # 60 pages, at most 8 in flight (4 tasks x 2), 300 ms each: the run lasts over 2 s, tokens live 1 s.
    gh.set_faults(token_ttl_s=1, latency_ms=300, token_latency_ms=200)
    result = sync(settings, database, oauth_spec(gh.url))
    stats = gh.stats()
    assert result.status == "succeeded"
    assert loaded(database, "issues") == issue_truth(gh, REPOS)
    assert stats["token_requests"] >= 3, "tokens living one second must have been refreshed during the run"
    assert stats["max_concurrent_token_requests"] == 1, "refreshes must be single-flight across tasks"
    assert stats["by_note"].get("invalid_grant", 0) == 0, "a spent refresh token was used again"
    stored = vault.get("gh_refresh")
    assert stored not in (None, FIRST_REFRESH) and stats["valid_refresh_tokens"] == 1
    # The stored token is the live one: a second run starts from it without re-authorisation.
    assert sync(settings, database, oauth_spec(gh.url)).status == "succeeded"


def test_revoked_grant_fails_the_run_as_needing_reauthorisation(oauth_gh, settings, database):
    gh = oauth_gh
    gh.admin("POST", "/_emulator/oauth/revoke")
    with pytest.raises(RunFailed, match=r"invalid_grant.*re-authorisation") as failed:
        sync(settings, database, oauth_spec(gh.url))
    assert CLIENT_SECRET not in str(failed.value) and FIRST_REFRESH not in str(failed.value)
    api_calls = [e for e in gh.log() if e["path"] != "/oauth/token"]
    assert api_calls == [], "no API request without a token"


def test_service_account_jwt_is_exchanged_for_tokens(dev_mode, settings, database, vault, tmp_path: Path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = tmp_path / "sa.pub.pem"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    email = "ipai@project.iam.gserviceaccount.com"
    with EmulatorProcess("github", "--repos", "1", "--issues-per-repo", "300", "--service-account-email", email,
                         "--service-account-public-key", str(public)) as gh:
        vault.set("sa_key", json.dumps(
            {"type": "service_account", "client_email": email, "private_key": pem, "private_key_id": "k1",
             "token_uri": f"{gh.url}/oauth/token"}))
        text = oauth_spec(gh.url).replace(", acme/repo2", "").replace("""  type: oauth2_refresh
  token_url: {url}/oauth/token
  client_id: ipai
  client_secret: {{secret: gh_client_secret}}
  refresh_token: {{secret: gh_refresh}}""".format(url=gh.url), """  type: service_account
  key_json: {secret: sa_key}
  scopes: [https://www.googleapis.com/auth/analytics.readonly]""")
        result = sync(settings, database, text)
        assert result.status == "succeeded" and result.rows_by_stream["issues"] > 0
        assert gh.stats()["by_note"].get("jwt", 0) >= 1
