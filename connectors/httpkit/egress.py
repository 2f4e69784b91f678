"""Egress policy (NFR-006): where an HTTP connector may send requests.

`https://` only, except to loopback in explicit dev mode (`IPAI_DEV_MODE=1`, for emulators and
local tests). Hosts that resolve to private, link-local, loopback (outside dev mode), multicast,
reserved or cloud-metadata addresses are refused, for the base URL and for every redirect, so a spec
cannot reach into the network the workers run in. The check runs in the resolver that opens each
connection, so a name that re-resolves to a private address later is refused too.

An operator (never a spec) may allow internal services, such as a self-hosted n8n that receives webhooks
or an Odoo on the office network: `IPAI_EGRESS_ALLOW` lists host names (`n8n.internal`, or `.corp.example`
for a domain) and networks (`10.20.0.0/16`, `192.168.1.7`). Listed destinations may be private and may use
plain HTTP; cloud metadata addresses stay refused whatever the list says.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from engine.core.egress import ALLOW_ENV, DEV_MODE_ENV, EgressRefused

METADATA_HOSTS = {"metadata.google.internal", "metadata", "instance-data"}


@dataclass(frozen=True)
class EgressPolicy:
    """Which destinations requests may reach; a value, so it travels to Ray tasks with the stream."""

    allow_loopback: bool = False
    """Plain HTTP to 127.0.0.1 / ::1 / localhost, for emulators (dev mode only)."""
    allow_hosts: tuple[str, ...] = ()
    """Internal host names the operator allows (`.example.com` allows the domain's hosts)."""
    allow_networks: tuple[str, ...] = ()
    """Internal networks (CIDR) the operator allows."""

    @classmethod
    def from_environment(cls) -> EgressPolicy:
        hosts: list[str] = []
        networks: list[str] = []
        for entry in filter(None, (e.strip().lower() for e in os.environ.get(ALLOW_ENV, "").split(","))):
            try:
                networks.append(str(ipaddress.ip_network(entry, strict=False)))
            except ValueError:
                hosts.append(entry)
        return cls(allow_loopback=os.environ.get(DEV_MODE_ENV) == "1", allow_hosts=tuple(hosts),
                   allow_networks=tuple(networks))

    def host_allowed(self, host: str) -> bool:
        """True when the operator listed `host` by name (or its domain) or its literal address."""
        host = host.lower().rstrip(".")
        if any(host == h or (h.startswith(".") and host.endswith(h)) for h in self.allow_hosts):
            return True
        try:
            return self._network_allowed(ipaddress.ip_address(host))
        except ValueError:
            return False

    def _network_allowed(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(ip in ipaddress.ip_network(n) for n in self.allow_networks)

    def check_url(self, url: str) -> None:
        """Refuse a URL by its scheme and literal host (names are checked again when resolved)."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if not host:
            raise EgressRefused(f"{url!r} has no host")
        if host in METADATA_HOSTS:
            raise EgressRefused(f"{host} is a cloud metadata service; requests there are refused")
        if self.host_allowed(host):
            refuse_link_local(host)
            return  # the operator's choice (IPAI_EGRESS_ALLOW): private and plain HTTP allowed
        loopback = _is_loopback_name(host)
        if loopback and not self.allow_loopback:
            raise EgressRefused(f"{host} is this machine (loopback); allowed only in dev mode "
                                f"({DEV_MODE_ENV}=1), for emulators and tests")
        try:
            self.check_address(host)
        except ValueError:
            pass  # a name, not a literal address: checked by the resolver when connecting
        if parts.scheme != "https" and not (parts.scheme == "http" and loopback and self.allow_loopback):
            raise EgressRefused(f"{url.split('?')[0]} is not https://; plain HTTP is allowed only to loopback in "
                                f"dev mode ({DEV_MODE_ENV}=1) and to hosts an operator lists in {ALLOW_ENV}")

    def check_address(self, address: str) -> None:
        """Refuse an IP address outside the public internet (raises ValueError if not an address)."""
        ip = ipaddress.ip_address(address)
        if ip.is_loopback:
            if self.allow_loopback:
                return
            raise EgressRefused(f"{address} is loopback; allowed only in dev mode ({DEV_MODE_ENV}=1)")
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            self.check_address(str(ip.ipv4_mapped))
            return
        refuse_link_local(address)
        if self._network_allowed(ip):
            return
        if ip.is_private or ip.is_reserved or ip.is_multicast or ip.is_unspecified:
            raise EgressRefused(f"{address} is a private or reserved address; refused (no requests into "
                                f"the network the workers run in unless an operator lists it in {ALLOW_ENV})")

    def resolver(self) -> AbstractResolver:
        return _PolicyResolver(self)


def refuse_link_local(address: str) -> None:
    """Link-local addresses are where cloud metadata services answer: refused even when listed."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return  # a name: its addresses are checked when it is resolved
    if ip.is_link_local or str(ip) in ("169.254.169.254", "fd00:ec2::254"):
        raise EgressRefused(f"{address} is link-local (where cloud metadata services live); refused")


def _is_loopback_name(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _PolicyResolver(AbstractResolver):
    """Resolve names as usual, then refuse the connection if any address is not allowed."""

    def __init__(self, policy: EgressPolicy) -> None:
        self.policy = policy
        self.inner = ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        if self.policy.host_allowed(host):
            for r in results:
                refuse_link_local(r["host"])
            return results
        for r in results:
            try:
                self.policy.check_address(r["host"])
            except EgressRefused as exc:
                raise EgressRefused(f"{host} resolves to {exc}") from None
        return results

    async def close(self) -> None:
        await self.inner.close()

