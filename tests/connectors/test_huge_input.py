"""RELIABILITY 15, huge input, in real runs against a loopback API: a 200 MB page fails the run once with a
clear error, whether the API declares its size or streams it (the reader stops at 64 MiB instead of holding
it all); a 10 MB record lands in bronze whole; a record nested 100,000 deep fails the run once, clearly."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest

from engine.core.errors import RunFailed
from tests.support.syncing import sync

pytestmark = pytest.mark.usefixtures("ray_cluster")

MB = 1024 * 1024
BLOB = "x" * (10 * MB)


class HugeApi(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
        self.server.hits[self.path] = self.server.hits.get(self.path, 0) + 1  # type: ignore[attr-defined]
        if self.path.startswith("/declared"):
            self._head(200 * MB)
            self._stream(200)
        elif self.path.startswith("/streamed"):
            self._head(None)
            self._stream(200)
        elif self.path.startswith("/record"):
            body = json.dumps({"data": [{"id": 1, "blob": BLOB}, {"id": 2, "blob": "small"}]}).encode()
            self._head(len(body))
            self.wfile.write(body)
        else:
            depth = 100_000
            body = ('{"data": [{"id": 1, "nest": ' + "[" * depth + "]" * depth + "}]}").encode()
            self._head(len(body))
            self.wfile.write(body)

    def _head(self, length: int | None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _stream(self, megabytes: int) -> None:
        """A JSON array of megabytes of records, written until the client hangs up."""
        try:
            self.wfile.write(b'{"data": [')
            chunk = (json.dumps({"id": 0, "pad": "y" * 1000}) + ",").encode() * 1000
            for _ in range(megabytes):
                self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadingHTTPServer]:
    monkeypatch.setenv("IPAI_DEV_MODE", "1")  # http:// to loopback
    server = ThreadingHTTPServer(("127.0.0.1", 0), HugeApi)
    server.hits = {}  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def spec(api: ThreadingHTTPServer, name: str, path: str) -> str:
    return f"""
name: {name}
source_type: http
sync_mode: full
source:
  base_url: http://127.0.0.1:{api.server_address[1]}
  retry: {{max_attempts: 3, initial_s: 0.1}}
  streams:
    - {{name: items, path: {path}, records: [data], primary_key: [id]}}
"""


@pytest.mark.parametrize("path", ["/declared", "/streamed"])
def test_a_200_mb_page_fails_the_run_once_with_a_clear_error(api, settings, database, path):
    with pytest.raises(RunFailed) as failed:
        sync(settings, database, spec(api, "huge", path))
    assert "is larger than 64 MiB, more than one page should be: ask the API for fewer records per page" in str(
        failed.value)
    assert api.hits[path] == 1, "refused once, not retried"


def test_a_10_mb_record_lands_in_bronze_whole(api, settings, database):
    result = sync(settings, database, spec(api, "wide", "/record"))
    assert result.status == "succeeded" and result.rows == 2
    with psycopg.connect(database.url) as conn:
        lengths = dict(conn.execute("select id, length(blob) from bronze_dev.raw_wide_items").fetchall())
    assert lengths == {1: len(BLOB), 2: 5}


def test_a_record_nested_100000_deep_fails_the_run_once_clearly(api, settings, database):
    with pytest.raises(RunFailed) as failed:
        sync(settings, database, spec(api, "deep", "/deep"))
    message = str(failed.value)
    assert "Traceback" not in message and "RecursionError" not in message
    assert "/deep answered malformed JSON (depth limit exceeded: line 1 column 1051" in message, message
    assert api.hits["/deep"] == 1, "a page that cannot be parsed is not fetched again and again"
