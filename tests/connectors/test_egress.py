"""Egress for HTTP (RELIABILITY 20, issue 16): one address policy for page fetches, redirects, token exchanges and
webhooks, decided on the address actually connected to; credentials that never follow a redirect to another
origin.

No test sends traffic beyond loopback: a test host name resolves through a stub resolver, and where a refusal
must come before any connection, a loopback listener counts the connections it was offered.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import aiohttp
import httpx
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from connectors.httpkit.auth import TokenExchange
from connectors.httpkit.components import RateLimit, RetryPolicy
from connectors.httpkit.egress import CheckedTransport, EgressPolicy
from connectors.httpkit.errors import HttpFailed, HttpRetryable
from connectors.httpkit.paginate import PageRequest
from connectors.httpkit.requester import Requester
from engine.core import egress as core
from engine.core.egress import EgressRefused
from engine.core.secrets import Redactor
from engine.core.spec import OAuth2RefreshAuth, SecretRef, ServiceAccountAuth
from tests.support.egress import StubResolver, listening

KEY = "apikey-canary-4d2f"
TOKEN = "token-canary-93ab"


class Budgetless:
    """Stands in for the credential actor: these tests are about where requests may go, not their pace."""

    async def call(self, method: str, *args: Any) -> Any:
        from connectors.httpkit.budget import Grant

        return Grant(0.0)

    def tell(self, method: str, *args: Any) -> None:
        pass


# -- the address rules, on every path -------------------------------------------------------------------


@pytest.mark.parametrize("address, said", [
    ("100.100.100.200", "cloud metadata"),       # Alibaba Cloud's metadata service
    ("192.0.0.192", "cloud metadata"),           # Oracle Cloud's
    ("100.64.1.1", "private"),                   # carrier-grade NAT (100.64.0.0/10)
    ("192.0.0.8", "not a public address"),       # IETF protocol assignments, which Python 3.11 calls global
    ("2002:7f00:1::1", "loopback"),              # 6to4 form of 127.0.0.1
    ("2002:a9fe:a9fe::1", "cloud metadata"),     # 6to4 form of 169.254.169.254
    ("64:ff9b::a00:7", "private"),               # NAT64 form of 10.0.0.7
    ("64:ff9b::7f00:1", "loopback"),             # NAT64 form of 127.0.0.1
])
def test_addresses_outside_the_public_internet_are_refused_on_every_path(address: str, said: str) -> None:
    http = EgressPolicy(resolve=StubResolver({"api.test": [address]}))
    literal = f"[{address}]" if ":" in address else address
    with pytest.raises(EgressRefused, match=said):
        http.check_url(f"https://{literal}/v1")
    with pytest.raises(EgressRefused, match=f"api.test resolves to {re.escape(address)}, .*{said}"):
        http.addresses("api.test", 443)
    with pytest.raises(EgressRefused, match=said):
        core.check_host(address, core.EgressPolicy(), what="source database host")


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1::1", "2002:5db8:d822::1", "64:ff9b::5db8:d822"])
def test_public_addresses_and_the_forms_that_carry_them_pass(address: str) -> None:
    policy = EgressPolicy(resolve=StubResolver({"api.test": [address]}))
    assert policy.addresses("api.test", 443) == (address,)


# -- token exchange: refused before connecting ------------------------------------------------------------


class MemoryStore:
    identity = "memory"

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def set(self, name: str, value: str) -> None:
        self.values[name] = value


def oauth_exchange(token_url: str, egress: EgressPolicy) -> TokenExchange:
    auth = OAuth2RefreshAuth(type="oauth2_refresh", token_url=token_url, client_id="ipai",
                             client_secret=SecretRef(secret="client_secret"), refresh_token=SecretRef(secret="refresh"))
    return TokenExchange(auth, {"client_secret": "cs-canary", "refresh": "rt-canary"}, MemoryStore(), egress)


def service_account_exchange(token_uri: str, egress: EgressPolicy) -> TokenExchange:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    key_json = json.dumps({"client_email": "sa@example.iam.gserviceaccount.com", "private_key": pem,
                           "token_uri": token_uri})
    auth = ServiceAccountAuth(type="service_account", key_json=SecretRef(secret="sa_key"))
    return TokenExchange(auth, {"sa_key": key_json}, MemoryStore(), egress)


@pytest.mark.parametrize("host", ["2130706433", "127.1", "0x7f000001", "[::ffff:127.0.0.1]", "token.test"])
@pytest.mark.parametrize("exchange", [oauth_exchange, service_account_exchange])
def test_token_urls_that_reach_this_machine_are_refused_before_connecting(host: str, exchange: Any) -> None:
    stub = StubResolver({"token.test": ["127.0.0.1"]})
    with listening() as listener:
        tokens = exchange(f"https://{host}:{listener.port}/token", EgressPolicy(resolve=stub))  # dev mode off
        with pytest.raises(EgressRefused, match=r"^token endpoint https://\S+ refused: .*this machine \(loopback\)"):
            tokens.token()
    assert listener.accepted == 0


def test_in_dev_mode_the_token_exchange_connects_to_the_address_it_checked() -> None:
    # The control case: the same listener does count a connection, made to the stub's answer for a name no
    # real resolver knows.
    stub = StubResolver({"token.test": ["127.0.0.1"]})
    with listening() as listener:
        tokens = oauth_exchange(f"https://token.test:{listener.port}/token",
                                EgressPolicy(allow_loopback=True, resolve=stub))
        with pytest.raises(HttpRetryable, match="token endpoint"):
            tokens.token()  # the listener hangs up: no TLS there
    assert listener.accepted == 1 and stub.asked == ["token.test"]


# -- TLS to the checked address keeps the host's name ------------------------------------------------------


@dataclass
class TlsServer:
    port: int
    ca: ssl.SSLContext
    """A client context that trusts the server's certificate (for `hooks.test` only)."""
    seen: list[tuple[str | None, str | None]] = field(default_factory=list)
    """(SNI server name, Host header) of each request."""


def certificate(name: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


@pytest.fixture
def tls_server(tmp_path: Any) -> Iterator[TlsServer]:
    cert, key = certificate("hooks.test")
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    names: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: names.append(name)  # type: ignore[assignment,misc]
    state = TlsServer(0, ssl.create_default_context(cadata=cert.decode()))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            state.seen.append((names[-1] if names else None, self.headers.get("Host")))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def test_a_checked_connection_verifies_tls_for_the_host_name_not_the_address(tls_server: TlsServer) -> None:
    stub = StubResolver({"hooks.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    policy = EgressPolicy(allow_hosts=("hooks.test", "other.test"), resolve=stub)
    with httpx.Client(transport=CheckedTransport(policy, verify=tls_server.ca)) as client:
        assert client.get(f"https://hooks.test:{tls_server.port}/").text == "ok"
        assert tls_server.seen == [("hooks.test", f"hooks.test:{tls_server.port}")]
        # Same address, another name: the certificate (for hooks.test) must not satisfy it.
        with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
            client.get(f"https://other.test:{tls_server.port}/")
    assert stub.asked == ["hooks.test", "other.test"]


# -- redirects ------------------------------------------------------------------------------------------


@dataclass
class Servers:
    """One app served on two loopback ports: `a` redirects, either one records what reached `/landing`."""

    a: str
    b: str
    landed: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def servers() -> Iterator[Servers]:
    landed: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        target = {"/meta": "http://169.254.169.254/latest/meta-data/", "/private": "https://10.0.0.7/x",
                  "/fine": "/landing"}.get(request.path)
        if request.path == "/to":  # redirect where the test says, with the status it says
            target = request.query["url"]
            raise web.HTTPTemporaryRedirect(target) if request.query.get("code") == "307" else web.HTTPFound(target)
        if target:
            raise web.HTTPFound(target)
        landed.append({"authorization": request.headers.get("Authorization"), "x-api-key":
                       request.headers.get("X-API-Key"), "cookie": request.headers.get("Cookie"),
                       "accept": request.headers.get("Accept"), "host": request.headers.get("Host"),
                       "query": dict(request.query)})
        return web.json_response([{"id": 1}])

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    sites = [web.TCPSite(runner, "127.0.0.1", 0) for _ in range(2)]
    ports = []
    for site in sites:
        loop.run_until_complete(site.start())
        ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield Servers(f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}", landed)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.run_until_complete(runner.cleanup())
    loop.close()


def fetch(request: PageRequest | str, *, policy: EgressPolicy | None = None, credentials: bool = False) -> Any:
    """Send `request` as an HTTP stream's requester would; with `credentials`, an API key in a header and the
    query, a bearer token and a session cookie, named as credentials the way stream.py names them."""
    policy = policy or EgressPolicy(allow_loopback=True)
    request = PageRequest(request) if isinstance(request, str) else request
    headers = {"Accept": "application/json"}
    params: dict[str, str] = {}
    if credentials:
        headers |= {"X-API-Key": KEY, "Authorization": f"Bearer {TOKEN}"}
        params = {"api_key": KEY}

    async def go() -> Any:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=policy.resolver())) as session:
            requester = Requester(session=session, actor=Budgetless(), tokens=None, headers=headers, params=params,
                                  rules=(), retry=RetryPolicy(max_attempts=1), rate_limit=RateLimit(), egress=policy,
                                  redact=Redactor((KEY, TOKEN)), auth_headers=("X-API-Key",), auth_params=("api_key",))
            return await requester.send(request, extra_headers={"Cookie": "session=1"} if credentials else None)

    return asyncio.run(go())


@pytest.mark.parametrize("path, reason", [("/meta", "metadata"), ("/private", "private")])
def test_redirects_into_the_workers_network_are_refused(servers: Servers, path: str, reason: str) -> None:
    with pytest.raises(HttpFailed, match=f"refused: .*{reason}"):
        fetch(servers.a + path)


def test_a_redirect_on_the_same_allowed_host_is_followed(servers: Servers) -> None:
    assert fetch(servers.a + "/fine").status == 200


@pytest.mark.parametrize("change", ["port", "host"])
def test_a_redirect_to_another_origin_receives_no_credentials(servers: Servers, change: str) -> None:
    port = servers.a.rsplit(":", 1)[1]
    elsewhere = servers.b if change == "port" else f"http://other.test:{port}"
    # The API echoes its query, key included, into the Location it answers with.
    location = f"{elsewhere}/landing?api_key={KEY}&page=2"
    policy = EgressPolicy(allow_loopback=True, allow_hosts=("other.test",),
                          resolve=StubResolver({"other.test": ["127.0.0.1"]}))
    assert fetch(f"{servers.a}/to?url={quote(location)}", policy=policy, credentials=True).status == 200
    [landed] = servers.landed
    assert landed["query"] == {"page": "2"}
    assert (landed["authorization"], landed["x-api-key"], landed["cookie"]) == (None, None, None)
    assert landed["accept"] == "application/json" and landed["host"] == elsewhere.split("//")[1]


def test_a_redirect_within_the_origin_keeps_the_credentials(servers: Servers) -> None:
    # The control case: the recorder does see credentials where they may go.
    fetch(f"{servers.a}/to?url={quote('/landing?page=2')}", credentials=True)
    [landed] = servers.landed
    assert (landed["authorization"], landed["x-api-key"], landed["cookie"]) == (f"Bearer {TOKEN}", KEY, "session=1")


def test_a_request_body_is_not_sent_on_to_another_origin(servers: Servers) -> None:
    url = f"{servers.a}/to?code=307&url={quote(servers.b + '/landing')}"
    with pytest.raises(HttpFailed, match="redirected to another origin .*its body is not sent there") as failed:
        fetch(PageRequest(url, body={"password": KEY}, method="POST"), credentials=True)
    assert servers.landed == [] and KEY not in str(failed.value)


# -- credentials belong in `auth:`, not in headers or the base URL --------------------------------------------

HTTP_SPEC = """name: api
source_type: http
source:
  base_url: {base_url}
  headers: {headers}
  streams:
    - name: items
      path: /items
"""


@pytest.mark.parametrize("base_url, headers, said", [
    ("https://api.example.com", f"{{Authorization: Bearer {TOKEN}}}", "source.headers: Value error, header "
     "'Authorization' carries credentials"),
    ("https://api.example.com", f"{{Accept: application/json, x-api-key: {KEY}}}", "header 'x-api-key' carries"),
    ("https://api.example.com", f"{{Cookie: 'session={TOKEN}'}}", "header 'Cookie' carries"),
    ("https://api.example.com", f"{{Proxy-Authorization: Basic {TOKEN}}}", "header 'Proxy-Authorization'"),
    ("https://api.example.com", f"{{X-Auth-Token: {TOKEN}}}", "header 'X-Auth-Token' carries"),
    (f"https://ipai:{TOKEN}@api.example.com", "{}", "source.base_url: Value error, base_url carries credentials "
     "(user:password@)"),
    (f"https://{TOKEN}@api.example.com", "{}", "base_url carries credentials"),
    (f"https://api.example.com/v1?api_key={KEY}", "{}", "base_url carries a credential in its parameter `api_key=`"),
])
def test_a_spec_may_not_hold_credentials_in_headers_or_the_base_url(base_url: str, headers: str, said: str) -> None:
    from connectors.specload import parse_spec
    from engine.core.errors import SpecError

    with pytest.raises(SpecError) as refused:
        parse_spec(HTTP_SPEC.format(base_url=base_url, headers=headers), filename="api.yaml")
    [issue] = [str(i) for i in refused.value.issues]
    assert issue.startswith("api.yaml:") and said in issue and "`auth:`" in issue
    assert KEY not in issue and TOKEN not in issue


def test_headers_that_carry_no_credentials_are_accepted() -> None:
    from connectors.specload import parse_spec

    spec = parse_spec(HTTP_SPEC.format(base_url="https://api.example.com/v1?version=2",
                                       headers="{Accept: application/json, X-GitHub-Api-Version: '2022-11-28'}"))
    assert spec.source.headers == {"Accept": "application/json", "X-GitHub-Api-Version": "2022-11-28"}  # type: ignore[attr-defined]


def test_plain_http_beyond_this_machine_is_refused_unless_the_operator_lists_the_host():
    """RELIABILITY 20: a base URL or redirect in plain text goes nowhere but loopback in dev mode or a host the
    operator lists."""
    with pytest.raises(EgressRefused, match=r"http://api\.example\.com/v2 is not https://; plain HTTP is allowed "
                                            r"only to loopback in dev mode"):
        EgressPolicy().check_url("http://api.example.com/v2?key=x")
    EgressPolicy(allow_hosts=("api.example.com",)).check_url("http://api.example.com/v2")
    EgressPolicy().check_url("https://api.example.com/v2")
