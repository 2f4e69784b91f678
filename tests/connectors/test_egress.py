"""Egress over real HTTP (RELIABILITY 20): a redirect to a metadata or private address is refused."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from connectors.httpkit.components import RateLimit, RetryPolicy
from connectors.httpkit.egress import EgressPolicy
from connectors.httpkit.errors import HttpFailed
from connectors.httpkit.paginate import PageRequest
from connectors.httpkit.requester import Requester
from engine.core.secrets import Redactor


class Budgetless:
    """Stands in for the credential actor: this test is about where requests may go, not their pace."""

    async def call(self, method: str, *args: Any) -> Any:
        from connectors.httpkit.budget import Grant

        return Grant(0.0)

    def tell(self, method: str, *args: Any) -> None:
        pass


@pytest.fixture
def redirecting_server() -> Iterator[str]:
    async def handler(request: web.Request) -> web.Response:
        target = {"/meta": "http://169.254.169.254/latest/meta-data/", "/private": "https://10.0.0.7/x",
                  "/fine": "/ok"}.get(request.path)
        if target:
            raise web.HTTPFound(target)
        return web.json_response([{"id": 1}])

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.run_until_complete(runner.cleanup())
    loop.close()


def fetch(url: str) -> Any:
    policy = EgressPolicy(allow_loopback=True)

    async def go() -> Any:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=policy.resolver())) as session:
            requester = Requester(session=session, actor=Budgetless(), tokens=None, headers={}, params={}, rules=(),
                                  retry=RetryPolicy(max_attempts=1), rate_limit=RateLimit(), egress=policy,
                                  redact=Redactor(()))
            return await requester.send(PageRequest(url))

    return asyncio.run(go())


@pytest.mark.parametrize("path, reason", [("/meta", "link-local"), ("/private", "private")])
def test_redirects_into_the_workers_network_are_refused(redirecting_server, path, reason):
    with pytest.raises(HttpFailed, match=f"refused: .*{reason}"):
        fetch(redirecting_server + path)


def test_a_redirect_on_the_same_allowed_host_is_followed(redirecting_server):
    assert fetch(redirecting_server + "/fine").status == 200
