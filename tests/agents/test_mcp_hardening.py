"""MCP over HTTP, hardened (issue 16, hole 10): no clear-text tokens beyond loopback, no server folders for
HTTP callers, a request budget per token, tokens that expire. The server runs as `ipai mcp --http` does, on
loopback only; the bind refusals are checked before anything listens."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastmcp import Client

from engine.cli.mcp_server import check_bind
from engine.controlplane.tokens import RequestBudget, parse_expiry
from engine.core.errors import ConfigError
from tests.support.cli import CLI, base_env, ipai

ROOT = Path(__file__).resolve().parents[2]
BUDGET = 3
HEADERS = {"Accept": "application/json, text/event-stream"}


def env_of(settings) -> dict[str, str]:
    env = base_env()
    env.update(IPAI_HOME=str(settings.home), IPAI_LAKEHOUSE_URI=settings.lakehouse_uri,
               IPAI_DATABASE_URL=settings.database_url)
    return env


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments, raise_on_error=False)
    assert not result.is_error, result
    answer: dict[str, Any] = result.structured_content or json.loads(result.content[0].text)
    return answer


@pytest.fixture
def server(settings, tmp_path) -> Iterator[str]:
    """`ipai mcp --http` on a free loopback port, no workers, a budget of BUDGET calls a minute; its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    log_path = tmp_path / "mcp-http.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([*CLI, "mcp", "--http", "--port", str(port), "--workers", "0",
                                 "--requests-per-minute", str(BUDGET)],
                                env=env_of(settings), cwd=ROOT, stdout=log_file, stderr=log_file)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text(errors="replace")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, log_path.read_text(errors="replace")
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def gold(folder: str | None) -> str:
    return "pipeline: views\nsteps:\n  gold: {gold: apply" + (f", dir: {folder}" if folder else "") + "}\n"


def test_http_callers_cannot_make_a_pipeline_read_server_folders(settings, server):
    token = ipai("token", "create", "agent", env=env_of(settings)).stdout.strip()

    async def agent() -> tuple[dict[str, Any], ...]:
        async with Client(server, auth=token) as client:
            return (await call(client, "pipeline_validate", pipeline_yaml=gold("/etc")),
                    await call(client, "pipeline_validate", pipeline_yaml=gold("/no/such/folder")),
                    await call(client, "pipeline_validate", pipeline_yaml=gold(None)))

    etc, missing, shipped = asyncio.run(agent())

    assert etc["ok"] is False and etc["error"]["code"] == "invalid_spec"
    assert "steps.gold.dir: dir reads a folder on the server, which remote callers may not" in etc["error"]["message"]
    # A folder that exists and one that does not answer alike: the answer tells nothing about the server.
    assert etc["error"]["message"].replace("/etc", "X") == missing["error"]["message"].replace("/no/such/folder", "X")
    assert shipped["ok"] is True and shipped["steps"][0]["target"].startswith("apply layers/gold/views")


def test_each_token_has_a_request_budget_per_minute(settings, server):
    env = env_of(settings)
    busy = ipai("token", "create", "busy", env=env).stdout.strip()
    other = ipai("token", "create", "other", env=env).stdout.strip()

    async def agents() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        async with Client(server, auth=busy) as client:
            answers = [await call(client, "connector_list") for _ in range(BUDGET + 1)]
        async with Client(server, auth=other) as client:
            return answers, await call(client, "connector_list")

    answers, others = asyncio.run(agents())

    assert [a["ok"] for a in answers] == [True] * BUDGET + [False]
    refused = answers[-1]["error"]
    assert refused["code"] == "rate_limited" and refused["retryable"] is True
    assert f"token 'busy' has made its {BUDGET} requests of this minute" in refused["message"]
    assert "--requests-per-minute" in refused["message"] and 0 < refused["details"]["retry_after_s"] <= 60
    assert others["ok"] is True  # the budget is per token


def test_an_expired_token_is_refused_with_a_message_saying_so(settings, server):
    env = env_of(settings)
    token = ipai("token", "create", "shortlived", "--expires", "1h", env=env).stdout.strip()
    request = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    live = httpx.post(server, json=request, headers={**HEADERS, "Authorization": f"Bearer {token}"})
    assert live.status_code != 401
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute("update ipai_api_tokens set expires_at = now() - interval '1 minute' where name = 'shortlived'")

    expired = httpx.post(server, json=request, headers={**HEADERS, "Authorization": f"Bearer {token}"})

    assert expired.status_code == 401
    reason = expired.json()["error_description"]
    assert "token 'shortlived' of tenant local expired at" in reason and "ipai token create shortlived" in reason
    assert token not in expired.text
    listed = ipai("token", "list", env=env).stdout
    assert "expired" in listed
    bad = ipai("token", "create", "never", "--expires", "soon", env=env, check=False)
    assert bad.returncode == 2 and "12h, 30d, 8w" in bad.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "mcp.example.com"])
def test_listening_beyond_loopback_without_tls_is_refused_before_binding(host, tmp_path):
    env = {**base_env(), "IPAI_HOME": str(tmp_path / "home")}
    refused = subprocess.run([*CLI, "mcp", "--http", "--host", host, "--port", "1", "--workers", "0"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2, refused.stderr
    assert f"--host {host} listens beyond this machine" in refused.stderr
    assert "--tls-cert and --tls-key, or --insecure" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "home").exists()  # refused before any database or worker was started


def test_the_bind_policy():
    for host in ("127.0.0.1", "127.0.0.5", "localhost", "::1", "[::1]"):
        assert check_bind(host, tls_cert=None, tls_key=None, insecure=False) is None
    warning = check_bind("0.0.0.0", tls_cert=None, tls_key=None, insecure=True)
    assert warning and "bearer tokens travel in clear" in warning
    with pytest.raises(ConfigError, match="go together"):
        check_bind("0.0.0.0", tls_cert=Path("cert.pem"), tls_key=None, insecure=False)
    with pytest.raises(ConfigError, match="no such file"):
        check_bind("0.0.0.0", tls_cert=Path("/no/cert.pem"), tls_key=Path("/no/key.pem"), insecure=False)


def test_the_request_budget_refuses_the_call_past_the_limit_and_frees_slots_after_a_minute():
    now = [1000.0]
    budget = RequestBudget(2, clock=lambda: now[0])
    assert budget.spend("a") is None and budget.spend("a") is None
    assert budget.spend("a") == 60.0
    assert budget.spend("b") is None
    now[0] += 30
    assert budget.spend("a") == 30.0
    now[0] += 30
    assert budget.spend("a") is None
    assert RequestBudget(0).spend("a") is None  # 0: no limit


def test_token_expiry_durations():
    assert parse_expiry("30d").days == 30 and parse_expiry("12h").total_seconds() == 12 * 3600
    assert parse_expiry("2w").days == 14
    for bad in ("0d", "30", "1y", "-1d"):
        with pytest.raises(ConfigError, match="12h, 30d, 8w"):
            parse_expiry(bad)
