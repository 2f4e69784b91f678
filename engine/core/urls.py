"""Credentials in URLs: found from the URL's parsed parts, refused in specs, masked in text.

A connection URL can carry a password in two places: its user info (`user:password@host`, where a password
typed without percent-encoding may hold `/`, `?`, `#`, `:` and `@`) and its parameters (`?password=`,
`sslpassword=`, an API's `?key=` or `?access_token=`; a libpq `key=value` string the same). Specs are stored
whole and reviewed in pull requests, so a spec refuses both (`credential_in`) and says to reference a secret
instead; text that names a URL (an error, a log line) masks both (`redact_url`).

The user info is everything between `://` and the *last* `@` of the URL's authority-and-path: that is how a
password with `/` or `@` in it still ends where the host begins. What cannot be parsed is masked rather than
shown.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote

_CREDENTIAL_NAME = re.compile(
    r"(?:ssl)?pass(?:word|wd)?|pwd|key|[a-z0-9_]*(?:secret|token|apikey|api_key|access_key|private_key|password)",
    re.IGNORECASE)
"""Parameter names whose value is a credential: password, sslpassword, pass, passwd, pwd, key, and any name
ending in secret, token, apikey, api_key, access_key, private_key or password (client_secret, access_token)."""

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*")
_PARAM = re.compile(r"(?P<lead>^|[?&;\s])(?P<name>[A-Za-z_][A-Za-z0-9_.%-]*)=(?P<value>'(?:[^'\\]|\\.)*'|[^&#\s]*)")


def is_credential_name(name: str) -> bool:
    """True when a URL or conninfo parameter named `name` carries a credential."""
    return _CREDENTIAL_NAME.fullmatch(name.replace("-", "_")) is not None


def credential_in(url: str) -> str | None:
    """Describe the credential `url` carries in clear (a password in its user info, or a password-like
    parameter with a value), or None when it carries none. Works on URLs and libpq `key=value` strings."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        return _credential_param(_PARAM.finditer(url))
    userinfo, after = _split_userinfo(rest)
    if userinfo is not None and userinfo.partition(":")[2]:
        return "a password (user:password@)"
    query = after.split("?", 1)[1] if "?" in after else ""
    for name, value in parse_qsl(query.split("#", 1)[0], keep_blank_values=True):
        if value and is_credential_name(name):
            return f"a credential in its parameter `{name}=`"
    return None


def password_of(url: str) -> str | None:
    """The password in `url`'s user info as written (None when it has none), for masking where a driver
    echoes it alone."""
    userinfo, _ = _split_userinfo(url.strip().partition("://")[2])
    return (userinfo.partition(":")[2] or None) if userinfo is not None else None


def redact_url(text: str) -> str:
    """Return `text` with the password of every URL in it, and every password-like parameter (of a URL or a
    libpq `key=value` string), replaced by `***`."""
    return _mask_params(_URL.sub(lambda m: _redact_one(m.group(0)), text))


def _split_userinfo(rest: str) -> tuple[str | None, str]:
    """(user info or None, the rest after it) of a URL's text after `://`: the text before the last `@`
    whose user name (before the first `:`) holds none of `@/?#`, so a query's `a@b` is not taken for it."""
    if rest.startswith("/"):
        return None, rest  # no authority at all (sqlite:///path): an `@` there is in the path
    at = len(rest)
    while (at := rest.rfind("@", 0, at)) > 0:
        user = rest[:at].split(":", 1)[0]
        if not any(c in user for c in "@/?#"):
            return rest[:at], rest[at + 1:]
    return None, rest


def _redact_one(url: str) -> str:
    scheme, _, rest = url.partition("://")
    userinfo, after = _split_userinfo(rest)
    if userinfo is not None and userinfo.partition(":")[2]:
        rest = f"{userinfo.partition(':')[0]}:***@{after}"
    return f"{scheme}://{rest}"


def _mask_params(text: str) -> str:
    def mask(m: re.Match[str]) -> str:
        if not m.group("value") or not is_credential_name(unquote(m.group("name"))):
            return m.group(0)
        return f"{m.group('lead')}{m.group('name')}=***"

    return _PARAM.sub(mask, text)


def _credential_param(found: object) -> str | None:
    for m in found:  # type: ignore[attr-defined]
        if m.group("value") and is_credential_name(unquote(m.group("name"))):
            return f"a credential in its parameter `{m.group('name')}=`"
    return None


def beyond_this_machine(url: str) -> bool:
    """True when the PostgreSQL `url` (URL or `key=value`) names a host that is not loopback or a Unix socket."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(url)
    hosts = str(params.get("hostaddr") or params.get("host") or "")
    return not all(on_this_machine(h.strip()) for h in hosts.split(","))


def with_tls(url: str) -> str:
    """The PostgreSQL `url` with `sslmode=require` added when it reaches beyond this machine and chooses no
    sslmode itself (RELIABILITY 20: no plain-text Postgres across a network unless the URL says so, e.g.
    `sslmode=disable`). `require` encrypts without checking the certificate: production URLs should say
    `sslmode=verify-full&sslrootcert=...`."""
    from psycopg.conninfo import conninfo_to_dict

    if conninfo_to_dict(url).get("sslmode") or not beyond_this_machine(url):
        return url
    if "://" not in url:
        return f"{url} sslmode=require"
    base, _, fragment = url.partition("#")
    joined = f"{base}{'&' if '?' in base else '?'}sslmode=require"
    return f"{joined}#{fragment}" if fragment else joined


def on_this_machine(host: str) -> bool:
    """Whether `host` is this machine only: no host or a folder (a Unix socket), localhost, 127.0.0.0/8, ::1."""
    import ipaddress

    if not host or host.startswith("/") or host.startswith("@") or host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
