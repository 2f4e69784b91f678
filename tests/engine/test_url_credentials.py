"""Issue 16, hole 7: a password in a connection URL, in any form, is refused in a spec and masked in messages.

Before, only `user:pw@` was caught, by a pattern over the text: `?password=`, `sslpassword=` and passwords
holding `/` or `@` passed validation, were stored in the definition and printed in run errors.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from connectors.specload import parse_spec
from engine.core.errors import SpecError
from engine.core.urls import credential_in, redact_url
from tests.support.cli import CLI, base_env
from tests.support.databases import migrated
from tests.support.rpc import rpc

CANARY = "canary-Pw9"
IN_CLEAR = [
    f"postgresql://loader@db.example/x?password={CANARY}",
    f"postgresql://loader@db.example/x?sslmode=require&sslpassword={CANARY}",
    f"postgresql://loader:{CANARY}/x@db.example/x",
    f"postgresql://loader:{CANARY}@x@db.example/x",
    f"postgres://loader:{CANARY}?x@db.example:5432/x?sslmode=require",
    f"mysql://root@db.example:3306/shop?pwd={CANARY}",
    f"mariadb://root@db.example/shop?Pass%77ord={CANARY}",
    f"postgresql://loader@db.example/x?options=-csearch_path%3Dx&access_token={CANARY}",
]
FINE = [
    "postgresql://loader@db.example:5432/x?sslmode=verify-full&application_name=a@b:c",
    "sqlite:///var/data/odd@name:1.db",
    "mysql://root@127.0.0.1:3306/shop",
]


def database_spec(url: str) -> str:
    return f"name: src\nsource_type: database\nsource:\n  url: '{url}'\n  tables: [{{table: public.orders}}]\n"


def destination_spec(url: str) -> str:
    return f"name: dest\nsource_type: sample\ndestinations:\n  postgres:\n    url: '{url}'\n"


@pytest.mark.parametrize("url", IN_CLEAR)
def test_a_database_source_url_with_a_password_in_any_form_is_refused(url):
    with pytest.raises(SpecError) as refused:
        parse_spec(database_spec(url), filename="src.yaml")
    message = str(refused.value)
    assert message.startswith("src.yaml:4:8: source.url: Value error, the URL carries "), message
    assert "store the whole URL as a secret (`ipai secret set NAME`) and write url: {secret: NAME}" in message
    assert CANARY not in message


@pytest.mark.parametrize("url", [u for u in IN_CLEAR if u.startswith("postgres")])
def test_a_postgres_destination_url_with_a_password_in_any_form_is_refused(url):
    with pytest.raises(SpecError) as refused:
        parse_spec(destination_spec(url), filename="dest.yaml")
    message = str(refused.value)
    assert message.startswith("dest.yaml:5:10: destinations.postgres.url: Value error, the URL carries "), message
    assert "{secret: NAME}" in message and CANARY not in message


@pytest.mark.parametrize("url", FINE)
def test_urls_without_a_password_pass(url):
    assert credential_in(url) is None
    assert redact_url(url) == url


def test_a_webhook_url_with_a_token_is_refused():
    text = ("name: hook\nsource_type: sample\nwebhooks:\n  - url: https://n8n.example/hook?token=" + CANARY +
            "\n    signing_secret: {secret: hook_key}\n")
    with pytest.raises(SpecError, match=r"the URL carries credentials \(user:password@, \?token= \.\.\.\)") as refused:
        parse_spec(text)
    assert CANARY not in str(refused.value)


@pytest.mark.parametrize("url", IN_CLEAR)
def test_redaction_masks_the_password_wherever_the_url_appears(url):
    said = f"cannot reach {url}: connection refused; also host=h password='{CANARY} x' dbname=d"
    assert CANARY not in redact_url(said), redact_url(said)
    assert "db.example" in redact_url(said) and "dbname=d" in redact_url(said)


@pytest.mark.parametrize("url", [u for u in IN_CLEAR if u.startswith("postgres")][:3])
def test_an_unreachable_control_plane_is_named_without_the_password(tmp_path, url):
    url = url.replace("db.example", "127.0.0.1:1").replace("127.0.0.1:1:5432", "127.0.0.1:1")
    proc = subprocess.run([*CLI, "runs"], env={**base_env(), "IPAI_HOME": str(tmp_path), "IPAI_DATABASE_URL": url},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "cannot reach the database at postgresql://loader" in proc.stderr, proc.stderr
    assert CANARY not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


def test_the_connector_create_rpc_refuses_and_stores_nothing(database):
    """The RPC applies the same rules before it stores a definition (a clear password would be stored with it)."""
    migrated(database)
    spec = {"name": "src", "source_type": "database", "source": {"tables": [{"table": "public.orders"}]}}
    deep: dict[str, Any] = {"x": 1}
    for _ in range(70):
        deep = {"x": deep}
    with database.connect() as conn:
        answers = [rpc(conn, "select public.connector_create(%s::jsonb)",
                       json.dumps({**spec, "source": {**spec["source"], "url": url}})) for url in IN_CLEAR]
        too_deep = rpc(conn, "select public.connector_create(%s::jsonb)", json.dumps({**spec, "description": deep}))
        too_big = rpc(conn, "select public.connector_create(%s::jsonb)",
                      json.dumps({**spec, "description": "x" * (1024 * 1024)}))
        stored = conn.execute("select count(*) from connector_definitions").fetchone()[0]
        fine = rpc(conn, "select public.connector_create(%s::jsonb)",
                   json.dumps({**spec, "source": {**spec["source"], "url": FINE[0]}}))
    for url, answer in zip(IN_CLEAR, answers):
        assert answer["ok"] is False and answer["error"]["code"] == "invalid_spec", (url, answer)
        assert "store the whole URL as a secret" in answer["error"]["message"] and CANARY not in json.dumps(answer)
    assert too_deep["error"]["message"] == "the spec is nested more than 64 levels deep"
    assert too_big["error"]["code"] == "invalid_spec" and "at most 1 MiB" in too_big["error"]["message"]
    assert stored == 0 and fine["ok"] is True, fine
