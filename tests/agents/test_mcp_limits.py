"""Issue 16, hole 4 over MCP: `connector_validate`, `connector_create` and `pipeline_validate` refuse spec bombs
(aliases, deep nesting, oversized text) with an `invalid_spec` answer at the bomb's line, over HTTP with a
bearer token as an agent calls them. Before, a 430-byte spec cost seconds of CPU per call and a deep one
answered `internal`."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import pytest
from fastmcp import Client

from tests.agents.test_mcp import ROOT, _free_port, _wait_listening, call
from tests.engine.test_spec_limits import BOMBS, HEAD
from tests.support.cli import CLI, base_env

pytestmark = pytest.mark.integration  # a server process


def _env(settings) -> dict[str, str]:
    return {**base_env(), "IPAI_HOME": str(settings.home), "IPAI_DATABASE_URL": settings.database_url,
            "IPAI_LAKEHOUSE_URI": settings.lakehouse_uri}


def test_mcp_http_refuses_spec_bombs_with_their_line(settings, tmp_path):
    env = _env(settings)
    token = subprocess.run([*CLI, "token", "create", "otto"], env=env, capture_output=True, text=True,
                           timeout=120, check=True).stdout.strip()
    port = _free_port()
    log_path = tmp_path / "mcp-http.log"
    with open(log_path, "wb") as log_file:
        server = subprocess.Popen([*CLI, "mcp", "--http", "--port", str(port), "--workers", "0"], env=env, cwd=ROOT,
                                  stdout=log_file, stderr=log_file)
    answers: dict[str, dict[str, Any]] = {}
    try:
        _wait_listening(port, server, log_path)

        async def agent() -> None:
            async with Client(f"http://127.0.0.1:{port}/mcp", auth=token, timeout=60) as otto:
                for kind, (text, _, _) in BOMBS.items():
                    answers[kind] = await call(otto, "connector_validate", spec=text)
                answers["create"] = await call(otto, "connector_create", spec=BOMBS["laughs"][0], env="prod")
                answers["pipeline"] = await call(otto, "pipeline_validate", pipeline_yaml=BOMBS["flow_deep"][0]
                                                 .replace(HEAD, "pipeline: bomb\nsteps: {}\n"))
                deep: dict[str, Any] = {"x": 1}
                for _ in range(100):
                    deep = {"x": deep}
                answers["object"] = await call(otto, "connector_validate", spec={**deep, "name": "bomb"})
                answers["fine"] = await call(otto, "connector_validate", spec=HEAD)

        asyncio.run(agent())
    finally:
        server.terminate()
        server.wait(timeout=60)

    for kind, (_, line, message) in BOMBS.items():
        error = answers[kind]["error"]
        assert error["code"] == "invalid_spec" and message in error["message"], (kind, answers[kind])
        assert error["details"]["errors"][0]["line"] == line, (kind, answers[kind])
    assert answers["create"]["error"]["code"] == "invalid_spec"
    assert "anchors and aliases" in answers["create"]["error"]["message"]
    assert answers["pipeline"]["error"]["code"] == "invalid_spec"
    assert answers["pipeline"]["error"]["message"].startswith("pipeline:3:")
    assert answers["object"]["error"] == {"code": "invalid_spec", "message": "spec: nested more than 64 levels deep",
                                          "details": {"errors": [{"path": "",
                                                                  "message": "spec: nested more than 64 levels deep"}]},
                                          "retryable": False}
    assert answers["fine"]["ok"] is True, answers["fine"]
    assert "Traceback" not in log_path.read_text(errors="replace")
