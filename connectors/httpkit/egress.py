"""Egress policy (NFR-006): where an HTTP connector may send requests.

`https://` only, except to loopback in explicit dev mode (`IPAI_DEV_MODE=1`, for emulators and
local tests). Hosts that resolve to private, link-local, loopback (outside dev mode), multicast,
reserved or cloud-metadata addresses are refused, for the base URL and for every redirect, so a spec
cannot reach into the network the workers run in. The check runs in the resolver that opens each
connection, so a name that re-resolves to a private address later is refused too.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

DEV_MODE_ENV = "IPAI_DEV_MODE"
METADATA_HOSTS = {"metadata.google.internal", "metadata", "instance-data"}


class EgressRefused(Exception):
    """A URL the policy does not allow; the message says why and what to change."""


@dataclass(frozen=True)
class EgressPolicy:
    """Which destinations requests may reach; a value, so it travels to Ray tasks with the stream."""

    allow_loopback: bool = False
    """Plain HTTP to 127.0.0.1 / ::1 / localhost, for emulators (dev mode only)."""

    @classmethod
    def from_environment(cls) -> EgressPolicy:
        return cls(allow_loopback=os.environ.get(DEV_MODE_ENV) == "1")

    def check_url(self, url: str) -> None:
        """Refuse a URL by its scheme and literal host (names are checked again when resolved)."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if not host:
            raise EgressRefused(f"{url!r} has no host")
        if host in METADATA_HOSTS:
            raise EgressRefused(f"{host} is a cloud metadata service; requests there are refused")
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
                                f"dev mode ({DEV_MODE_ENV}=1)")

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
        if ip.is_link_local or str(ip) in ("169.254.169.254", "fd00:ec2::254"):
            raise EgressRefused(f"{address} is link-local (where cloud metadata services live); refused")
        if ip.is_private or ip.is_reserved or ip.is_multicast or ip.is_unspecified:
            raise EgressRefused(f"{address} is a private or reserved address; refused (no requests into "
                                "the network the workers run in)")

    def resolver(self) -> AbstractResolver:
        return _PolicyResolver(self)


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
        for r in results:
            try:
                self.policy.check_address(r["host"])
            except EgressRefused as exc:
                raise EgressRefused(f"{host} resolves to {exc}") from None
        return results

    async def close(self) -> None:
        await self.inner.close()

