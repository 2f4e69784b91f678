"""Where the platform may connect on a spec's behalf: the one egress policy for every outbound connection
(database servers, SQLite files, and through connectors/httpkit/egress.py page fetches, token exchanges and
webhooks), and the identity of the control-plane database that sources must not read.

A host name is resolved here, once, and every address it resolves to is checked; `resolve_checked` returns
them so the caller connects to exactly those (PostgreSQL: `hostaddr=`; HTTP: the checked address, with the
name kept for TLS and `Host`), and a name cannot resolve to an allowed address for the check and to another
for the connection. Literal addresses are read as a resolver reads them (`127.1`, `2130706433` and
`0x7f000001` are 127.0.0.1), and an IPv6 address that carries an IPv4 one (`::ffff:a.b.c.d`, 6to4
`2002::/16`, NAT64 `64:ff9b::/96` and `64:ff9b:1::/48`) is judged by the IPv4 address it carries.

    always refused           link-local (169.254.0.0/16, fe80::/10), cloud metadata (169.254.169.254,
                             fd00:ec2::254, 100.100.100.200, 192.0.0.192)
    refused unless allowed   loopback (127.0.0.0/8, ::1, 0.0.0.0, a Unix socket path), private networks
                             (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, fc00::/7), and any
                             other address that is not global (`ipaddress.is_global`, 192.0.0.0/24, multicast)
    allowed                  public addresses

`IPAI_EGRESS_ALLOW` (the operator's environment, never a spec) lists what else may be reached, separated by
commas: the words `loopback` and `private`, networks (`10.20.0.0/16`, `192.168.1.7`) and host names
(`db.internal`, or `.corp.example` for a domain). HTTP sources, token exchanges and webhooks read the same
variable. Nothing allows link-local or metadata addresses.

Dev mode allows loopback: `IPAI_DEV_MODE=1`, or, while `IPAI_EGRESS_ALLOW` is unset, a control plane on this
machine (the embedded PostgreSQL, or a database URL on loopback or a Unix socket: the defaults a developer
runs with). A deployment whose control plane is elsewhere, or that sets `IPAI_EGRESS_ALLOW`, reaches loopback
only when the list says `loopback`.

SQLite files are confined to folders: `IPAI_SQLITE_ROOTS` (separated by `os.pathsep`), else the current
folder and the IPAI home folder. Paths are compared after resolving symlinks and `..`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.core.errors import ConfigError

ALLOW_ENV = "IPAI_EGRESS_ALLOW"
DEV_MODE_ENV = "IPAI_DEV_MODE"
SQLITE_ROOTS_ENV = "IPAI_SQLITE_ROOTS"
CONTROL_PLANE_ENV = "IPAI_SOURCES_IN_CONTROL_PLANE"
"""`allow`: a dedicated role may read app tables in the control-plane database of a multi-tenant deployment."""

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int | None], Sequence[str]]
"""(host, port) -> the addresses a connection to it would try."""

METADATA = {ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "192.0.0.192")}
LINK_LOCAL = tuple(ipaddress.ip_network(n) for n in ("169.254.0.0/16", "fe80::/10"))
LOOPBACK = tuple(ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128", "0.0.0.0/32", "::/128"))
PRIVATE = tuple(ipaddress.ip_network(n) for n in
                ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"))
NOT_GLOBAL = (ipaddress.ip_network("192.0.0.0/24"),)
"""IETF protocol assignments (RFC 6890): not reachable on the internet, though Python 3.11 calls most of them
global."""
NAT64 = tuple(ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48"))
_NUMERIC_HOST = re.compile(r"[0-9][0-9a-fA-FxX.]*")


class EgressRefused(ConfigError):
    """A destination the egress policy does not allow (an HTTP URL, a database host, a SQLite path); the message
    says why and what to change (the spec, or the operator's IPAI_EGRESS_ALLOW / IPAI_SQLITE_ROOTS)."""


def system_resolve(host: str, port: int | None) -> list[str]:
    """The addresses the system resolver gives for `host`, in its order, each once."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class EgressPolicy:
    """What database sources (and destination servers) may reach; a value, so it travels to Ray tasks."""

    loopback: bool = False
    """This machine: 127.0.0.0/8, ::1 and Unix sockets (dev mode, or `loopback` in IPAI_EGRESS_ALLOW)."""
    private: bool = False
    """Every private network (`private` in IPAI_EGRESS_ALLOW)."""
    networks: tuple[str, ...] = ()
    """Networks the operator allows (CIDR)."""
    hosts: tuple[str, ...] = ()
    """Host names the operator allows (`.example.com` allows the domain's hosts)."""
    sqlite_roots: tuple[str, ...] = ()
    """Folders whose SQLite files sources may open (resolved paths)."""
    resolve: Resolver = system_resolve
    """How host names become addresses (a stub in tests)."""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, *, local: bool = False,
                         home: Path | None = None) -> EgressPolicy:
        """The operator's policy: IPAI_EGRESS_ALLOW, IPAI_DEV_MODE and IPAI_SQLITE_ROOTS. `local` says the
        control plane runs on this machine (embedded, loopback or socket), which counts as dev mode while
        IPAI_EGRESS_ALLOW is unset; `home` is the IPAI home folder, a default SQLite root."""
        env = os.environ if environ is None else environ
        words, networks, hosts = allow_list(env.get(ALLOW_ENV, ""))
        dev = env.get(DEV_MODE_ENV) == "1" or (local and not env.get(ALLOW_ENV, "").strip())
        roots = [r for r in env.get(SQLITE_ROOTS_ENV, "").split(os.pathsep) if r.strip()]
        if not roots:
            roots = [str(Path.cwd())] + ([str(home)] if home is not None else [])
        return cls(loopback=dev or "loopback" in words, private="private" in words, networks=networks,
                   hosts=hosts, sqlite_roots=tuple(str(Path(r).expanduser().resolve()) for r in roots))


def allow_list(text: str) -> tuple[set[str], tuple[str, ...], tuple[str, ...]]:
    """(words, networks, host names) of an IPAI_EGRESS_ALLOW value."""
    words: set[str] = set()
    networks: list[str] = []
    hosts: list[str] = []
    for entry in filter(None, (e.strip().lower() for e in text.split(","))):
        if entry in ("loopback", "private"):
            words.add(entry)
            continue
        try:
            networks.append(str(ipaddress.ip_network(entry, strict=False)))
        except ValueError:
            hosts.append(entry.rstrip("."))
    return words, tuple(networks), tuple(hosts)


def check_host(host: str, policy: EgressPolicy, *, port: int | None = None, what: str = "host") -> tuple[str, ...]:
    """Return the addresses `host` resolves to once every one of them is allowed; connect to those, not to the
    name. A Unix socket path (`/run/postgresql`, `@abstract`) is loopback and returns (). Raises EgressRefused
    naming `what` and the host, the address, why, and the setting that would allow it."""
    if host.startswith(("/", "@")):
        if not (policy.loopback or host_listed(host, policy)):
            raise EgressRefused(f"{what} {host} is a Unix socket on this machine (loopback); "
                                f"{_how_to_allow('loopback', None)}")
        return ()
    try:
        return resolve_checked(host, policy, port=port, what=what)
    except OSError as exc:
        raise ConfigError(f"{what} {host} cannot be resolved ({exc}); check the host name") from None


def resolve_checked(host: str, policy: EgressPolicy, *, port: int | None = None,
                    what: str = "host") -> tuple[str, ...]:
    """Resolve `host` once (a literal address is itself) and return its addresses once every one is allowed;
    the caller connects to those. Raises EgressRefused saying why and what would allow it, or OSError when
    the name resolves to nothing."""
    name = host.strip("[]").lower().rstrip(".")
    literal = literal_address(name)
    if literal is not None:
        addresses = [str(literal)]
    else:
        addresses = list(dict.fromkeys(a.split("%")[0] for a in policy.resolve(name, port)))
        if not addresses:
            raise socket.gaierror(f"{host} resolves to no address")
    listed = host_listed(name, policy)
    for address in addresses:
        reason = refusal(address, policy, listed=listed)
        if reason:
            said = f"is {reason}" if literal is not None else f"resolves to {address}, {reason}"
            raise EgressRefused(f"{what} {host} {said}")
    return tuple(addresses)


def host_listed(host: str, policy: EgressPolicy) -> bool:
    """Whether the operator lists `host` by name, or its domain (`.corp.example`)."""
    name = host.strip("[]").lower().rstrip(".")
    return any(name == h or (h.startswith(".") and name.endswith(h)) for h in policy.hosts)


def literal_address(host: str) -> IpAddress | None:
    """`host` as an IP address, or None for a host name. Numeric forms that C resolvers accept as IPv4
    (`127.1`, `2130706433`, `0x7f000001`, `0177.0.0.1`) count as the address they stand for."""
    name = host.strip("[]").split("%")[0]
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(name):  # digits, dots and hex only: no host name looks like this
        try:
            return ipaddress.IPv4Address(socket.inet_aton(name))
        except OSError:
            return None
    return None


def carried_ipv4(ip: IpAddress) -> IpAddress:
    """The IPv4 address an IPv6 one carries (IPv4-mapped, 6to4, NAT64), which is where it leads; else `ip`."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return ip
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in n for n in NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def refusal(address: str, policy: EgressPolicy, *, listed: bool = False) -> str | None:
    """Why `address` may not be reached under `policy`, or None; `listed`: the operator lists its host name.
    The one decision every outbound connection takes (databases here, HTTP in connectors/httpkit/egress.py)."""
    ip = carried_ipv4(ipaddress.ip_address(address.split("%")[0]))
    if ip in METADATA:
        return "a cloud metadata address; refused whatever the settings say (change the URL)"
    if any(ip in n for n in LINK_LOCAL):
        return "link-local (where cloud metadata services answer); refused whatever the settings say"
    allowed = listed or any(ip in ipaddress.ip_network(n) for n in policy.networks)
    if any(ip in n for n in LOOPBACK):
        return None if allowed or policy.loopback else "this machine (loopback); " + _how_to_allow("loopback", ip)
    if any(ip in n for n in PRIVATE):
        return None if allowed or policy.private else "a private address; " + _how_to_allow("private", ip)
    if ip.is_multicast or not ip.is_global or any(ip in n for n in NOT_GLOBAL):
        return None if allowed else "not a public address (reserved or multicast); refused unless the operator " \
            f"lists it: {ALLOW_ENV}={ipaddress.ip_network(ip)}"
    return None


def _how_to_allow(kind: str, ip: IpAddress | None) -> str:
    listed = f"{ALLOW_ENV}={ipaddress.ip_network(ip)} (or ={kind})" if ip is not None else f"{ALLOW_ENV}={kind}"
    mode = f", or dev mode ({DEV_MODE_ENV}=1)" if kind == "loopback" else ""
    return f"connections reach {kind} addresses only where the operator allows it: {listed}{mode}"


def check_path(path: str | Path, policy: EgressPolicy, *, what: str = "SQLite file") -> Path:
    """Return `path` resolved (symlinks and `..`) once it lies inside a folder of `policy.sqlite_roots`;
    raise EgressRefused naming the folders and IPAI_SQLITE_ROOTS otherwise."""
    resolved = Path(path).expanduser().resolve()
    if any(resolved.is_relative_to(root) for root in policy.sqlite_roots):
        return resolved
    roots = ", ".join(policy.sqlite_roots) or "none"
    said = str(path) if str(resolved) == str(path) else f"{path} (which is {resolved})"
    raise EgressRefused(f"{what} {said} is outside the folders database sources may read ({roots}); move it "
                        f"into one, or have the operator add its folder to {SQLITE_ROOTS_ENV} "
                        f"(folders separated by {os.pathsep!r})")


@dataclass(frozen=True)
class ControlPlane:
    """Who the control-plane database is, so that a source reaching it by any name, address or socket is known
    after connecting; the run reads it once (engine/run/sources.py) and hands it to plans and read tasks."""

    system_identifier: str | None
    """`pg_control_system()`'s identifier of the server; None where the run's role may not read it."""
    started_at: str
    """`pg_postmaster_start_time()`: tells the server apart where the identifier cannot be read."""
    database: str
    tenants: int
    """Tenants of the deployment: with more than one, sources need the operator's leave to read here."""
    sources_allowed: bool = False
    """IPAI_SOURCES_IN_CONTROL_PLANE=allow: the operator lets dedicated roles read app tables here."""

    def same_server(self, system_identifier: str | None, started_at: str) -> bool:
        """Whether a server that reports these values is the control plane's."""
        if self.system_identifier is not None and system_identifier is not None:
            return self.system_identifier == system_identifier
        return self.started_at == started_at
