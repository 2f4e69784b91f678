"""Egress policy for HTTP (NFR-006): where page fetches, token exchanges, redirects and webhooks may connect.

The address rules are engine/core/egress.py's, one decision for every outbound connection (`refusal`): link-
local and cloud metadata addresses always refused; loopback, private and other non-global addresses unless
allowed; an IPv6 address judged by the IPv4 one it carries (mapped, 6to4, NAT64); `127.1`, `2130706433` and
`0x7f000001` read as the address a resolver makes of them. On top of those, HTTP adds its scheme rule:
`https://` only, plain HTTP only to loopback when loopback is allowed (dev mode, for emulators and tests) and
to destinations the operator lists.

A host name is resolved once per connection and every address is checked; the connection goes to exactly
the checked addresses, with the original name kept for TLS (SNI and the certificate check) and `Host`:

    aiohttp (page fetches)            `policy.resolver()`: aiohttp connects to what the resolver returns
    httpx (token exchange, webhooks)  `CheckedTransport`: the request goes to the checked address, with
                                      `sni_hostname` and the `Host` header naming the original host

An operator (never a spec) may allow internal services, such as a self-hosted n8n that receives webhooks or an
Odoo on the office network: `IPAI_EGRESS_ALLOW` lists host names (`n8n.internal`, or `.corp.example` for a
domain), networks (`10.20.0.0/16`, `192.168.1.7`) and the words `loopback` and `private`. Listed hosts and
networks may use plain HTTP; metadata and link-local addresses stay refused whatever the list says.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from aiohttp.abc import AbstractResolver, ResolveResult

from engine.core import egress as core
from engine.core.egress import ALLOW_ENV, DEV_MODE_ENV, EgressRefused, Resolver, system_resolve

METADATA_HOSTS = {"metadata.google.internal", "metadata", "instance-data"}


@dataclass(frozen=True)
class EgressPolicy:
    """Which destinations requests may reach; a value, so it travels to Ray tasks with the stream."""

    allow_loopback: bool = False
    """127.0.0.0/8, ::1 and localhost, plain HTTP included (dev mode, or `loopback` in IPAI_EGRESS_ALLOW)."""
    allow_hosts: tuple[str, ...] = ()
    """Internal host names the operator allows (`.example.com` allows the domain's hosts)."""
    allow_networks: tuple[str, ...] = ()
    """Internal networks (CIDR) the operator allows."""
    allow_private: bool = False
    """Every private network, over https:// (`private` in IPAI_EGRESS_ALLOW)."""
    resolve: Resolver = system_resolve
    """How host names become addresses (a stub in tests)."""

    @classmethod
    def from_environment(cls) -> EgressPolicy:
        """The operator's policy: IPAI_EGRESS_ALLOW, and IPAI_DEV_MODE=1 for loopback."""
        words, networks, hosts = core.allow_list(os.environ.get(ALLOW_ENV, ""))
        return cls(allow_loopback=os.environ.get(DEV_MODE_ENV) == "1" or "loopback" in words,
                   allow_hosts=hosts, allow_networks=networks, allow_private="private" in words)

    @property
    def rules(self) -> core.EgressPolicy:
        """The same policy in engine/core/egress.py's terms, whose rules decide every address."""
        return core.EgressPolicy(loopback=self.allow_loopback, private=self.allow_private,
                                  networks=self.allow_networks, hosts=self.allow_hosts, resolve=self.resolve)

    def host_allowed(self, host: str) -> bool:
        """True when the operator listed `host` by name (or its domain) or its literal address."""
        if core.host_listed(host, self.rules):
            return True
        ip = core.literal_address(host)
        return ip is not None and any(ip in ipaddress.ip_network(n) for n in self.allow_networks)

    def check_url(self, url: str) -> None:
        """Refuse a URL by its scheme and literal host; a name's addresses are checked when it is resolved
        (`addresses`), right before connecting."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower().rstrip(".")
        if not host:
            raise EgressRefused(f"{url!r} has no host")
        if host in METADATA_HOSTS:
            raise EgressRefused(f"{host} is a cloud metadata service; requests there are refused")
        listed = self.host_allowed(host)
        ip = core.literal_address(host)
        loopback = host == "localhost" or host.endswith(".localhost") or (ip is not None and ip.is_loopback)
        if loopback and not (self.allow_loopback or listed):
            raise EgressRefused(f"{host} is this machine (loopback); allowed only in dev mode ({DEV_MODE_ENV}=1), "
                                f"for emulators and tests, or where the operator lists it ({ALLOW_ENV}=loopback)")
        if ip is not None:
            self.check_address(str(ip))
        if parts.scheme != "https" and not (parts.scheme == "http" and (listed or (loopback and self.allow_loopback))):
            raise EgressRefused(f"{url.split('?')[0]} is not https://; plain HTTP is allowed only to loopback in "
                                f"dev mode ({DEV_MODE_ENV}=1) and to hosts an operator lists in {ALLOW_ENV}")

    def check_address(self, address: str) -> None:
        """Refuse an IP address the policy does not allow (raises ValueError if not an address)."""
        ip = core.literal_address(address)
        if ip is None:
            raise ValueError(f"{address!r} is not an IP address")
        reason = core.refusal(str(ip), self.rules)
        if reason:
            raise EgressRefused(f"{address} is {reason}")

    def addresses(self, host: str, port: int | None = None) -> tuple[str, ...]:
        """Resolve `host` once and return its addresses once every one is allowed: connect to those. Raises
        EgressRefused, or OSError when the name does not resolve."""
        if host.lower().rstrip(".") in METADATA_HOSTS:
            raise EgressRefused(f"{host} is a cloud metadata service; requests there are refused")
        return core.resolve_checked(host, self.rules, port=port, what="host")

    def resolver(self) -> AbstractResolver:
        """An aiohttp resolver that returns only checked addresses (aiohttp connects to what it returns)."""
        return _PolicyResolver(self)


def refuse_link_local(address: str) -> None:
    """Refuse a link-local or metadata address, which no setting allows (a name passes: it is checked when
    resolved)."""
    ip = core.literal_address(address)
    if ip is None:
        return
    reason = core.refusal(str(ip), core.EgressPolicy(loopback=True, private=True, networks=("0.0.0.0/0", "::/0")))
    if reason:
        raise EgressRefused(f"{address} is {reason}")


class _PolicyResolver(AbstractResolver):
    """Resolve each name once through the policy; a name with any refused address is refused whole."""

    def __init__(self, policy: EgressPolicy) -> None:
        self.policy = policy

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        addresses = await asyncio.to_thread(self.policy.addresses, host, port)
        results: list[ResolveResult] = []
        for address in addresses:
            kind = socket.AF_INET6 if ":" in address else socket.AF_INET
            if family in (socket.AF_UNSPEC, kind):
                results.append(ResolveResult(hostname=host, host=address, port=port, family=kind, proto=0,
                                             flags=socket.AI_NUMERICHOST))
        if not results:
            raise OSError(f"{host} has no address of the family asked for")
        return results

    async def close(self) -> None:
        pass


class CheckedTransport(httpx.BaseTransport):
    """An httpx transport that connects only to checked addresses: each request's host is resolved once
    (`EgressPolicy.addresses`), and the request sent to those addresses in turn, with the original host in
    `Host` and as the TLS server name (SNI, and the name the certificate must carry).

    `inner` replaces the network for tests (an `httpx.MockTransport` sees the address in the URL)."""

    def __init__(self, policy: EgressPolicy, *, inner: httpx.BaseTransport | None = None,
                 verify: ssl.SSLContext | bool = True) -> None:
        self.policy, self.inner, self.verify = policy, inner, verify
        self.pools: dict[tuple[str, str, int], httpx.BaseTransport] = {}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        self.policy.check_url(str(url))
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = self.policy.addresses(url.host, port)
        except OSError as exc:
            raise httpx.ConnectError(f"{url.host} cannot be resolved: {exc}", request=request) from None
        # One pool per original host: a connection opened with one server name never serves another.
        transport = self.inner or self.pools.setdefault((url.scheme, url.host, port),
                                                        httpx.HTTPTransport(verify=self.verify))
        if core.literal_address(url.host) is None:
            request.extensions = {**request.extensions, "sni_hostname": url.host}
        failed: httpx.ConnectError | None = None
        try:
            for address in addresses:
                request.url = url.copy_with(host=address)  # `Host` was set from the original URL
                try:
                    return transport.handle_request(request)
                except httpx.ConnectError as exc:
                    failed = exc
        finally:
            request.url = url
        assert failed is not None
        raise failed

    def close(self) -> None:
        for transport in [*self.pools.values(), *([self.inner] if self.inner else [])]:
            transport.close()
