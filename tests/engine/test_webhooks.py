"""Webhooks when a run ends (FR-039): real syncs of the sample shop (Postgres, Delta, the shared local Ray)
announced to a real HTTP receiver on loopback, which checks every signature with the secret kept in the
Vault, as an n8n workflow would, and answers from a script (500, 400 ...) before it accepts."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from connectors.httpkit.egress import EgressPolicy
from engine.controlplane import records
from engine.controlplane import webhooks
from engine.controlplane.settings import Settings
from engine.controlplane.db import Database
from engine.run.driver import RunOptions, prepare_run
from engine.core.errors import RunFailed, SpecError
from engine.core.secrets import Redactor
from connectors.specload import parse_spec
from tests.support.egress import StubResolver
from tests.support.syncing import sync
from tests.support.vault import Vault

pytestmark = pytest.mark.usefixtures("ray_cluster")

SECRET = "n8n_signing"
SECRET_VALUE = "whsec-canary-7f3a9c1e5b"
SPEC = """
name: shop
source_type: sample
source:
  seed: 3
  days: 5
  customers: 300
  orders: 2000
  partition_rows: 1000
streams:
{streams}
webhooks:
{webhooks}
"""


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


class Receiver:
    """Accepts POSTs whose `X-IPAI-Signature` is the HMAC-SHA256 of the body under `key` (401 otherwise),
    after answering each path's scripted statuses first; keeps every verified request."""

    def __init__(self) -> None:
        self.key: bytes | None = None
        self.script: dict[str, list[int]] = {}
        self.received: list[Received] = []
        self.forged = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                expected = "sha256=" + hmac.new(receiver.key or b"", body, hashlib.sha256).hexdigest()
                if not hmac.compare_digest(expected, self.headers.get("X-IPAI-Signature", "")):
                    receiver.forged += 1
                    self._answer(401, b"bad signature")
                    return
                path = self.path.split("?")[0]
                receiver.received.append(Received(path, dict(self.headers.items()), body))
                answers = receiver.script.get(path, [])
                self._answer(answers.pop(0) if answers else 200, b"ok")

            def _answer(self, status: int, text: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook receiver", daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    monkeypatch.setenv("IPAI_DEV_MODE", "1")  # plain HTTP to loopback, as for the emulators
    r = Receiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
def signing(vault: Vault, receiver: Receiver) -> str:
    """The signing secret stored in the Vault; the receiver verifies with what the Vault holds."""
    vault.set(SECRET, SECRET_VALUE)
    stored = vault.get(SECRET)
    assert stored is not None
    receiver.key = stored.encode()
    return stored


def spec_text(*hooks: str, streams: tuple[str, ...] = ("customers", "orders")) -> str:
    return SPEC.format(streams="\n".join(f"  - name: {s}" for s in streams), webhooks="\n".join(hooks))


def hook(url: str, *, events: str = "") -> str:
    return f"  - url: {url}\n    signing_secret: {{secret: {SECRET}}}\n" + (f"    events: {events}\n" if events else "")


def deliveries(database: Database, run_id: str) -> list[tuple[Any, ...]]:
    with database.connect() as conn:
        return conn.execute("select attempt, http_status, delivered, url, event, delivery_id::text, error"
                            " from webhook_deliveries where run_id = %s order by attempt", (run_id,)).fetchall()


def logs(database: Database, run_id: str) -> list[dict[str, Any]]:
    with database.connect() as conn:
        return records.get_logs(conn, run_id)


def test_a_finished_run_posts_one_signed_summary_to_each_webhook_that_wants_it(
    settings: Settings, database: Database, receiver: Receiver, signing: str,
) -> None:
    text = spec_text(hook(receiver.url("/hook/sync-done?source=ipai")),
                     hook(receiver.url("/hook/alerts"), events="[failed]"))
    result = sync(settings, database, text)
    assert result.status == "succeeded"

    [got] = receiver.received
    assert receiver.forged == 0 and receiver.at("/hook/alerts") == []
    body = got.payload
    assert got.headers["X-IPAI-Event"] == body["event"] == "run.succeeded"
    assert got.headers["X-IPAI-Delivery"] == body["delivery_id"]
    assert body["run"]["id"] == result.run_id and body["run"]["status"] == "succeeded"
    assert body["run"]["rows"] == result.rows > 0
    assert body["run"]["rows_by_stream"] == result.rows_by_stream
    assert set(body["run"]["rows_by_stream"]) == {"customers", "orders"}
    assert body["run"]["error"] is None and body["run"]["duration_s"] >= 0
    assert body["run"]["started_at"] < body["run"]["ended_at"]
    assert body["instance"] == {"id": result.instance_id, "name": "shop", "env": "dev", "source_type": "sample"}

    [(attempt, status, delivered, url, event, delivery_id, error)] = deliveries(database, result.run_id)
    assert (attempt, status, delivered, event, error) == (1, 200, True, "run.succeeded", None)
    assert url == receiver.url("/hook/sync-done") and delivery_id == body["delivery_id"]
    records = logs(database, result.run_id)
    assert [r["event"] for r in records if r["event"].startswith("webhook.")] == ["webhook.delivered"]

    # The signing key signs; it is never sent, logged or stored.
    everything = json.dumps(records, default=str) + repr(deliveries(database, result.run_id))
    assert signing not in everything and signing.encode() not in got.body


def test_a_receiver_failing_twice_gets_it_on_the_third_try(
    settings: Settings, database: Database, receiver: Receiver, signing: str,
) -> None:
    receiver.script["/hook"] = [500, 500]
    result = sync(settings, database, spec_text(hook(receiver.url("/hook"))))

    assert result.status == "succeeded"
    attempts = receiver.at("/hook")
    assert len(attempts) == 3 and receiver.forged == 0
    assert len({a.headers["X-IPAI-Delivery"] for a in attempts}) == 1, "one delivery, tried three times"
    assert all(a.payload["run"]["id"] == result.run_id for a in attempts)
    recorded = deliveries(database, result.run_id)
    assert [(a, s, d) for a, s, d, *_ in recorded] == [(1, 500, False), (2, 500, False), (3, 200, True)]
    assert recorded[0][6] == "HTTP 500: ok"
    [delivered] = [r for r in logs(database, result.run_id) if r["event"].startswith("webhook.")]
    assert delivered["event"] == "webhook.delivered" and delivered["fields"]["attempts"] == 3


def test_a_receiver_refusing_the_delivery_is_not_retried_and_the_run_still_succeeds(
    settings: Settings, database: Database, receiver: Receiver, signing: str,
) -> None:
    receiver.script["/hook"] = [400]
    result = sync(settings, database, spec_text(hook(receiver.url("/hook"))))

    assert result.status == "succeeded"
    assert len(receiver.at("/hook")) == 1
    assert [(a, s, d) for a, s, d, *_ in deliveries(database, result.run_id)] == [(1, 400, False)]
    [failed] = [r for r in logs(database, result.run_id) if r["event"].startswith("webhook.")]
    assert failed["event"] == "webhook.failed" and "HTTP 400" in failed["message"]
    with database.connect() as conn:
        assert conn.execute("select status from connector_runs where id = %s", (result.run_id,)).fetchone() == (
            "succeeded",)


def test_a_failed_run_sends_the_failed_event_with_its_error(
    settings: Settings, database: Database, receiver: Receiver, signing: str,
) -> None:
    with pytest.raises(RunFailed) as failed:
        sync(settings, database, spec_text(hook(receiver.url("/hook")), streams=("nope",)))

    [got] = receiver.received
    body = got.payload
    assert got.headers["X-IPAI-Event"] == body["event"] == "run.failed"
    assert body["run"]["id"] == failed.value.run_id and body["run"]["status"] == "failed"
    assert "unknown stream nope" in body["run"]["error"]
    assert [(a, s, d) for a, s, d, *_ in deliveries(database, failed.value.run_id)] == [(1, 200, True)]


def test_a_missing_signing_secret_fails_the_run_before_the_source_is_read(
    settings: Settings, database: Database, receiver: Receiver,
) -> None:
    with pytest.raises(RunFailed) as failed:
        sync(settings, database, spec_text(hook(receiver.url("/hook"))))

    message = str(failed.value)
    assert f"webhooks[0].signing_secret: secret '{SECRET}' is not set in the Vault" in message
    assert f"ipai secret set {SECRET}" in message
    assert receiver.received == []
    with database.connect() as conn:
        run = conn.execute("select status, rows_processed from connector_runs where id = %s",
                           (failed.value.run_id,)).fetchone()
        planned = conn.execute("select count(*) from connector_extractions").fetchone()
    assert run == ("failed", 0) and planned == (0,)


def test_plain_http_to_another_host_fails_the_run_up_front(
    settings: Settings, database: Database, receiver: Receiver, signing: str,
) -> None:
    with pytest.raises(RunFailed, match=r"webhooks\[0\]\.url: http://hooks\.example\.com/x is not https://"):
        sync(settings, database, spec_text(hook("http://hooks.example.com/x")))


def scripted(*answers: int | tuple[int, str] | None) -> httpx.MockTransport:
    """Answers in order (a status, a status with Retry-After, None for a refused connection), then 200."""
    queue = list(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        answer = queue.pop(0) if queue else 200
        if answer is None:
            raise httpx.ConnectError("connection refused", request=request)
        status, retry_after = answer if isinstance(answer, tuple) else (answer, None)
        return httpx.Response(status, headers={"Retry-After": retry_after} if retry_after else {})

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(("answers", "waits", "statuses"), [
    pytest.param([(429, "3"), 503], [3.0, 2.0], [429, 503, 200], id="retry-after-then-backoff"),
    pytest.param([(429, "3600")], [10.0], [429, 200], id="retry-after-capped"),
    pytest.param([None] * 9, [1.0, 2.0, 4.0, 8.0], [None] * 5, id="dead-receiver-five-attempts"),
    pytest.param([404], [], [404], id="4xx-final"),
])
def test_retries_back_off_honour_retry_after_and_stop(
    database: Database, answers: list[Any], waits: list[float], statuses: list[int | None],
) -> None:
    text = spec_text(hook("http://127.0.0.1:9/hook"))
    spec = parse_spec(text)
    _, run_id = prepare_run(spec, text, db=database, options=RunOptions())
    slept: list[float] = []
    with database.connect() as conn:
        records.finish_run(conn, run_id, status="succeeded")
        webhooks.announce(conn, (webhooks.Target(spec.webhooks[0], "k" * 16),), spec=spec, run_id=run_id,
                          redact=Redactor(()), transport=scripted(*answers),
                          egress=EgressPolicy(allow_loopback=True), sleep=slept.append)
    assert slept == waits
    recorded = deliveries(database, run_id)
    assert [r[1] for r in recorded] == statuses
    [outcome] = [r for r in logs(database, run_id) if r["event"].startswith("webhook.")]
    assert outcome["event"] == ("webhook.delivered" if statuses[-1] == 200 else "webhook.failed")
    if statuses[-1] is None:
        assert recorded[-1][6] == "ConnectError: connection refused"


def announce_to(database: Database, url: str, egress: EgressPolicy) -> str:
    """A finished run of a spec whose one webhook is `url`, announced under `egress`; returns the run id."""
    text = spec_text(hook(url))
    spec = parse_spec(text)
    _, run_id = prepare_run(spec, text, db=database, options=RunOptions())
    with database.connect() as conn:
        records.finish_run(conn, run_id, status="succeeded")
        webhooks.announce(conn, (webhooks.Target(spec.webhooks[0], "k" * 16),), spec=spec, run_id=run_id,
                          redact=Redactor(()), egress=egress, sleep=lambda s: None)
    return run_id


def test_a_name_that_rebinds_after_the_check_is_still_posted_to_the_checked_address(
    database: Database, receiver: Receiver,
) -> None:
    receiver.key = b"k" * 16
    port = receiver.server.server_address[1]
    # The first answer is the receiver; any later lookup would lead to the metadata service instead.
    stub = StubResolver({"hooks.test": [["127.0.0.1"], ["169.254.169.254"]]})
    run_id = announce_to(database, f"http://hooks.test:{port}/hook",
                         EgressPolicy(allow_hosts=("hooks.test",), resolve=stub))

    [got] = receiver.received
    assert got.headers["Host"] == f"hooks.test:{port}", "the name travels in Host, the checked address is dialled"
    assert stub.asked == ["hooks.test"], "one lookup: the connection went to the address that was checked"
    assert [(a, s, d) for a, s, d, *_ in deliveries(database, run_id)] == [(1, 200, True)]


def test_a_name_resolving_to_a_metadata_address_is_refused_before_connecting(
    database: Database, receiver: Receiver,
) -> None:
    receiver.key = b"k" * 16
    port = receiver.server.server_address[1]
    stub = StubResolver({"hooks.test": ["169.254.169.254"]})
    run_id = announce_to(database, f"http://hooks.test:{port}/hook",
                         EgressPolicy(allow_hosts=("hooks.test",), resolve=stub))  # listed, and still refused

    assert receiver.received == []
    [(attempt, status, delivered, _, _, _, error)] = deliveries(database, run_id)
    assert (attempt, status, delivered) == (1, None, False)
    assert error.startswith("refused: host hooks.test resolves to 169.254.169.254, a cloud metadata address")


@pytest.mark.parametrize(("url", "said"), [
    ("https://user:hunter2@n8n.example.com/webhook/1", "the URL carries credentials"),
    ("ftp://n8n.example.com/webhook/1", "the URL must be https://HOST/"),
    ("https://n8n.example.com:99999/webhook/1", "Port out of range"),
])
def test_a_bad_webhook_url_is_refused_naming_the_field(url: str, said: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(spec_text(hook(url)), filename="x.yaml")
    [issue] = [str(i) for i in info.value.issues]
    assert issue.startswith("x.yaml:14:10: webhooks[0].url: Value error, ") and said in issue
    assert "hunter2" not in issue


def test_unknown_events_are_refused_naming_the_field() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(spec_text(hook("https://n8n.example.com/webhook/1", events="[finished]")), filename="x.yaml")
    [issue] = [str(i) for i in info.value.issues]
    assert "webhooks[0].events[0]" in issue and "'succeeded', 'failed', 'deferred' or 'cancelled'" in issue
