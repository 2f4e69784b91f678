"""Issue 16, hole 8 in a real run: an API that echoes the credential in its error reaches neither the run's
error nor its logs, whether it echoes the Basic header (`base64(user:secret)`) or the secret JSON-escaped.

The API is a loopback server in the test that answers every request 400 with the request's Authorization
header and the password, JSON-escaped, in its message; the run's error carries the API's words (that is how
a user learns what the API said), so before this the canary went out with them.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine.controlplane import records
from engine.core.errors import RunFailed
from tests.support.canary import forms
from tests.support.syncing import sync

pytestmark = pytest.mark.usefixtures("ray_cluster")

CANARY = f'canary"pw\\{uuid.uuid4().hex[:12]}'
"""A quote and a backslash: its JSON-escaped form differs from the value."""


class EchoingApi(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
        said = {"message": f"bad request; you sent Authorization: {self.headers.get('Authorization')} "
                           f"and a password {json.dumps(CANARY)[1:-1]}"}
        body = json.dumps(said).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.server.seen.append(self.headers.get("Authorization"))  # type: ignore[attr-defined]

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadingHTTPServer]:
    monkeypatch.setenv("IPAI_DEV_MODE", "1")  # http:// to loopback
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoingApi)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_credential_the_api_echoes_is_masked_in_the_run_error_and_logs(api, settings, database, vault):
    vault.set("echo_password", CANARY)
    spec = f"""
name: echo
source_type: http
sync_mode: full
auth: {{type: basic, username: ipai, password: {{secret: echo_password}}}}
source:
  base_url: http://127.0.0.1:{api.server_address[1]}
  retry: {{max_attempts: 1}}
  streams:
    - {{name: items, path: /items, records: [data], primary_key: [id]}}
"""
    with pytest.raises(RunFailed) as failed:
        sync(settings, database, spec)
    header = "Basic " + base64.b64encode(f"ipai:{CANARY}".encode()).decode()
    assert header in api.seen, "the API must have been sent the credential it echoes"
    error = str(failed.value)
    assert "bad request; you sent Authorization: Basic *** and a password ***" in error, error
    with database.connect() as conn:
        [run_id] = [r[0] for r in conn.execute("select id::text from connector_runs")]
        logs = json.dumps(records.get_logs(conn, run_id), default=str)
        stored = conn.execute("select coalesce(error, '') from connector_runs").fetchone()[0]
    assert "Basic ***" in stored
    for needle in [header.split()[1], json.dumps(CANARY)[1:-1], *(f.decode() for f in forms(CANARY))]:
        assert needle not in error and needle not in stored and needle not in logs, needle
