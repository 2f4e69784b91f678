"""The MCP server as an agent uses it: a FastMCP client over stdio and over HTTP drives
create -> run -> status -> logs against a real local platform (Postgres, Delta, the shared Ray, a real worker)
and sees rows land; bad input and other tenants' tokens get structured errors."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport

from connectors.specload import parse_spec
from tests.support.cli import env_for, ipai
from layers.addressing import Address
from tests.support.truth import bronze_postgres, source_rows

pytestmark = pytest.mark.usefixtures("ray_cluster")

ROOT = Path(__file__).resolve().parents[2]
SPEC = """\
# orders of the sample shop, for an agent
name: {name}
source_type: sample
source:
  seed: 11
  days: 10
  customers: 300
  orders: 1500
  partition_rows: 1500
layers: [bronze, silver]
"""
PIPELINE = """\
pipeline: agent_refresh
steps:
  sync: {run: mcp_stdio}
  gold: {gold: apply, needs: [sync]}
"""
TOOLS = {"connector_list", "connector_validate", "connector_create", "connector_run", "connector_status",
         "connector_logs", "pipeline_validate", "pipeline_run", "pipeline_status"}
DONE = ("succeeded", "failed", "deferred", "cancelled")


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments, raise_on_error=False)
    assert not result.is_error, result
    answer: dict[str, Any] = result.structured_content or json.loads(result.content[0].text)
    return answer


async def create_run_follow(client: Client, name: str) -> tuple[dict[str, Any], dict[str, Any], list[dict]]:
    """What an agent does: create the instance, queue a run, poll its status, read its logs."""
    created = await call(client, "connector_create", spec=SPEC.format(name=name))
    assert created["ok"], created
    assert created["name"] == name and created["source_type"] == "sample" and created["version"] == 1
    queued = await call(client, "connector_run", instance_id=created["instance_id"])
    assert queued["ok"] and queued["created"] and queued["status"] == "queued", queued
    deadline = time.monotonic() + 240
    while True:
        status = await call(client, "connector_status", run_id=queued["run_id"])
        assert status["ok"], status
        if status["run"]["status"] in DONE or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    logs = await call(client, "connector_logs", run_id=queued["run_id"])
    assert logs["ok"], logs
    return created, status["run"], logs["logs"]


def assert_landed(settings, name: str, run: dict[str, Any], logs: list[dict], *, tenant: str = "local") -> None:
    spec = parse_spec(SPEC.format(name=name))
    where = Address(tenant, spec.env, name)  # the instance's own tables, in its tenant's schemas
    truth = source_rows(spec, "orders")
    assert run["status"] == "succeeded", run
    assert run["rows_by_stream"]["orders"] == truth.num_rows
    bronze = f"{where.schema('bronze')}.{where.bronze_table('orders')}"
    assert bronze_postgres(settings.database_url, bronze).num_rows == truth.num_rows
    # The worker (connected as ipai_worker) built silver too: one row per order, owned by the layers' role.
    silver = (where.schema("silver"), where.silver_table("orders"))
    with psycopg.connect(settings.database_url) as conn:
        assert conn.execute('select count(distinct id), count(*) from "{}"."{}"'.format(*silver)).fetchone() == \
            (truth.num_rows, truth.num_rows)
        assert conn.execute("select tableowner from pg_tables where schemaname = %s and tablename = %s",
                            silver).fetchone() == ("ipai_bronze",)
    events = [entry["event"] for entry in logs]
    assert events[0] == "run.queued" and "run.succeeded" in events, events


def test_stdio_agent_creates_runs_and_follows_a_sync(settings):
    env = env_for(settings)

    async def agent() -> None:
        transport = StdioTransport(sys.executable, ["-m", "engine.cli", "mcp", "--workers", "1"], env=env,
                                   cwd=str(ROOT))
        async with Client(transport) as client:
            names = {t.name for t in await client.list_tools()}
            assert TOOLS <= names

            bad = await call(client, "connector_validate", spec="name: Bad Name\nsource_type: sample\n"
                             "source: {orders: -5}\n")
            assert bad["ok"] is False and bad["error"]["code"] == "invalid_spec"
            assert bad["error"]["retryable"] is False
            paths = {e["path"] for e in bad["error"]["details"]["errors"]}
            assert {"name", "source.orders"} <= paths, bad
            not_yaml = await call(client, "connector_create", spec="name: [unclosed")
            assert not_yaml["error"]["code"] == "invalid_spec" and "invalid YAML" in not_yaml["error"]["message"]
            missing = await call(client, "connector_run", instance_id="nosuch")
            assert missing["ok"] is False and missing["error"]["code"] == "not_found"
            assert "no connector instance 'nosuch'" in missing["error"]["message"]

            created, run, logs = await create_run_follow(client, "mcp_stdio")
            assert_landed(settings, "mcp_stdio", run, logs)
            listed = await call(client, "connector_list")
            [instance] = listed["instances"]
            assert instance["instance_id"] == created["instance_id"]
            assert instance["last_run"]["status"] == "succeeded"

            cycle = await call(client, "pipeline_validate", pipeline_yaml=PIPELINE.replace("needs: [sync]",
                                                                                           "needs: [sync, gold]"))
            assert cycle["error"]["code"] == "invalid_spec" and "cycle gold -> gold" in cycle["error"]["message"]
            unknown = await call(client, "pipeline_run", pipeline_yaml=PIPELINE.replace("run: mcp_stdio", "run: ghost"))
            assert unknown["error"]["code"] == "invalid_spec"
            assert unknown["error"]["details"]["errors"][0]["path"] == "steps.sync.run", unknown
            started = await call(client, "pipeline_run", pipeline_yaml=PIPELINE)
            assert started["ok"] and started["status"] in ("running", "succeeded"), started
            deadline = time.monotonic() + 240
            while True:
                status = await call(client, "pipeline_status", pipeline_run_id=started["pipeline_run_id"])
                if status["status"] not in ("queued", "running") or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert status["status"] == "succeeded", status
            assert [(s["name"], s["status"]) for s in status["steps"]] == [("sync", "succeeded"), ("gold", "succeeded")]

    asyncio.run(agent())
    # The stored definition is the text the agent sent, comments included: it is what a reviewer reads.
    stored = ipai("sql", "select yaml_spec from connector_definitions", env=env).stdout
    assert "# orders of the sample shop, for an agent" in stored


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_http_agent_with_a_bearer_token_acts_only_for_its_tenant(settings, tmp_path):
    env = env_for(settings)
    ipai("tenant", "create", "acme", env=env)
    ipai("tenant", "create", "globex", env=env)
    acme = ipai("token", "create", "otto", "--tenant", "acme", env=env).stdout.strip()
    globex = ipai("token", "create", "otto", "--tenant", "globex", env=env).stdout.strip()
    assert acme.startswith("ipai_") and acme != globex
    listed = ipai("token", "list", env=env).stdout
    assert "acme" in listed and "globex" in listed and acme not in listed

    port = _free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    log_path = tmp_path / "mcp-http.log"
    with open(log_path, "wb") as log_file:
        server = subprocess.Popen([sys.executable, "-m", "engine.cli", "mcp", "--http", "--port", str(port)],
                                  env=env, cwd=ROOT, stdout=log_file, stderr=log_file)
    try:
        _wait_listening(port, server, log_path)
        refused = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                             headers={"Accept": "application/json, text/event-stream"})
        assert refused.status_code == 401
        forged = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                            headers={"Accept": "application/json, text/event-stream",
                                     "Authorization": "Bearer ipai_forged"})
        assert forged.status_code == 401

        async def agents() -> None:
            async with Client(url, auth=acme) as otto:
                assert TOOLS <= {t.name for t in await otto.list_tools()}
                created, run, logs = await create_run_follow(otto, "mcp_http")
                assert_landed(settings, "mcp_http", run, logs, tenant="acme")
            async with Client(url, auth=globex) as other:
                # Another tenant's run and instance answer exactly as missing ones do.
                theirs = await call(other, "connector_status", run_id=run["run_id"])
                nowhere = await call(other, "connector_status", run_id="00000000-0000-0000-0000-000000000000")
                assert theirs["error"]["code"] == nowhere["error"]["code"] == "not_found"
                assert theirs["error"]["message"].replace(run["run_id"], "X") == \
                    nowhere["error"]["message"].replace("00000000-0000-0000-0000-000000000000", "X")
                hijack = await call(other, "connector_run", instance_id=created["instance_id"])
                assert hijack["error"]["code"] == "not_found"
                assert (await call(other, "connector_list"))["instances"] == []

        asyncio.run(agents())
    finally:
        server.terminate()
        server.wait(timeout=60)
    ipai("token", "revoke", "otto", "--tenant", "globex", env=env)
    assert "globex" not in ipai("token", "list", env=env).stdout
    assert acme not in log_path.read_text(errors="replace") and globex not in log_path.read_text(errors="replace")


def _wait_listening(port: int, server: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.poll() is None, log_path.read_text(errors="replace")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"the MCP server did not listen on {port}: {log_path.read_text(errors='replace')}")


def test_the_mcp_folder_is_not_the_mcp_package():
    """`ipai mcp` loads mcp/server.py by path; FastMCP still imports the real `mcp` library beside it."""
    assert not (ROOT / "mcp" / "__init__.py").exists()
    code = ("import engine.cli.main; from engine.cli.mcp_server import load_server; import mcp; m = load_server(); "
            "print(mcp.__file__); print(m.__name__)")
    found = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.split()
    assert "site-packages" in found[0] and found[1] == "ipai_mcp_server", found
