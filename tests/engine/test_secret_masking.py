"""Issue 16, hole 8: the redactor masks the forms a secret takes on the wire, and short secrets are refused.

Before, a Basic header (`base64(user:secret)`), a JSON-escaped value and any secret under 4 characters went
through unmasked; now every form below is masked, and a value under 8 characters is refused when stored (by
the CLI before it connects, and by the `secret_set` RPC for callers that skip the CLI).
"""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.parse

import pytest

from engine.controlplane.vault import set_secret, vault_session
from engine.core.errors import ConfigError
from engine.core.secrets import Redactor
from tests.support.cli import CLI, base_env
from tests.support.databases import migrated
from tests.support.rpc import rpc

CANARY = 'cAn4ry"pw\\/ü+ &x'
"""Quotes, a backslash, a slash, non-ASCII, `+`, a space and `&`: each escapes differently in JSON and URLs."""


def basic(user: str, secret: str = CANARY) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


@pytest.mark.parametrize("user", ["", "a", "ab", "admin", "service-account@example.com"])
def test_a_basic_header_is_masked_whatever_the_user(user):
    header = basic(user)
    said = f"401 from https://api.example/x: the server saw Authorization: {header}; check the credentials"
    masked = Redactor.of([CANARY])(said)
    assert masked == "401 from https://api.example/x: the server saw Authorization: Basic ***; check the credentials"


@pytest.mark.parametrize("form", [
    json.dumps(CANARY)[1:-1], json.dumps(CANARY, ensure_ascii=False)[1:-1],
    urllib.parse.quote(CANARY, safe=""), urllib.parse.quote(CANARY), urllib.parse.quote_plus(CANARY),
    base64.b64encode(CANARY.encode()).decode(), base64.urlsafe_b64encode(CANARY.encode()).decode(), CANARY,
], ids=["json", "json-utf8", "quoted", "quoted-path", "quoted-plus", "base64", "base64-url", "raw"])
def test_each_encoded_form_is_masked(form):
    body = '{"error": "bad token", "echo": {"token": "' + form + '"}}'
    masked = Redactor.of([CANARY])(f"the API answered: {body}")
    assert masked == 'the API answered: {"error": "bad token", "echo": {"token": "***"}}', masked


def test_a_secret_inside_a_larger_base64_blob_is_masked():
    blob = base64.b64encode(json.dumps({"user": "x", "token": CANARY, "n": 1}).encode()).decode()
    masked = Redactor.of([CANARY])(f"cookie session={blob} ends")
    assert CANARY not in masked and blob not in masked and masked.endswith(" ends")


def test_ordinary_text_is_left_alone():
    text = "GET https://api.example/repos?page=2 answered 404: Not Found (Basic YWRtaW4= is someone else's)"
    assert Redactor.of([CANARY, "another-secret-value"])(text) == text


def test_a_short_secret_is_refused_by_the_cli_before_it_connects(tmp_path):
    env = {**base_env(), "IPAI_HOME": str(tmp_path), "IPAI_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    proc = subprocess.run([*CLI, "secret", "set", "api_key"], input="abc\n", env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert ("secret 'api_key' not stored: its value has 3 characters, and secrets must have at least 8"
            in proc.stderr), proc.stderr
    assert "cannot reach" not in proc.stderr


def test_a_short_secret_is_refused_by_the_api_and_the_rpc(settings, database):
    migrated(database)
    with pytest.raises(ConfigError, match="its value has 7 characters, and secrets must have at least 8"):
        set_secret(database, settings.home, "api_key", "1234567")
    with database.with_session(vault_session(settings.home, create=True)).connect() as conn:
        refused = rpc(conn, "select public.secret_set(%s, %s)", "api_key", "1234567")
        stored = rpc(conn, "select public.secret_set(%s, %s)", "api_key", "12345678")
    assert refused["ok"] is False and refused["error"]["code"] == "invalid_argument"
    assert refused["error"]["message"].startswith("secret value must be 8 to 65536 characters")
    assert stored["ok"] is True
