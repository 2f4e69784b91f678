"""Authentication for HTTP streams: static credentials applied per request, and token exchanges.

API key, bearer and basic credentials are applied by the requester itself. OAuth 2.0 refresh tokens
and Google service accounts are exchanged for short-lived access tokens by `TokenExchange`, which
runs only inside the credential's actor, so one refresh happens at a time for every task of an
instance; a rotated refresh token is stored before anything can use it.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from connectors.httpkit.egress import CheckedTransport, EgressPolicy, EgressRefused
from connectors.httpkit.errors import HttpFailed, HttpRetryable, api_message
from engine.core.secrets import SecretStore
from engine.core.spec import ApiKeyAuth, BasicAuth, BearerAuth, NoAuth, OAuth2RefreshAuth, ServiceAccountAuth

AnyAuth = NoAuth | ApiKeyAuth | BearerAuth | BasicAuth | OAuth2RefreshAuth | ServiceAccountAuth
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def static_credentials(auth: AnyAuth, secrets: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Return (headers, query params) for credentials that need no exchange."""
    if isinstance(auth, ApiKeyAuth):
        key = secrets[auth.key.secret]
        if auth.query_param:
            return {}, {auth.query_param: key}
        return {auth.header or "X-API-Key": key}, {}
    if isinstance(auth, BearerAuth):
        return {"Authorization": f"Bearer {secrets[auth.token.secret]}"}, {}
    if isinstance(auth, BasicAuth):
        pair = f"{auth.username}:{secrets[auth.password.secret]}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}, {}
    return {}, {}


def needs_exchange(auth: AnyAuth) -> bool:
    return isinstance(auth, (OAuth2RefreshAuth, ServiceAccountAuth))


@dataclass
class AccessToken:
    value: str
    expires_at: float
    issued_at: float

    def fresh(self, now: float) -> bool:
        """Valid for a while yet: renewed a minute before expiry, or at 3/4 of a shorter lifetime."""
        margin = min(60.0, (self.expires_at - self.issued_at) / 4)
        return self.expires_at - now > margin


class TokenExchange:
    """Obtains access tokens for one credential; used by one actor, so calls never overlap."""

    def __init__(self, auth: OAuth2RefreshAuth | ServiceAccountAuth, secrets: dict[str, str],
                 store: SecretStore, egress: EgressPolicy) -> None:
        self.auth, self.secrets, self.store, self.egress = auth, secrets, store, egress
        self.current: AccessToken | None = None
        self.exchanges = 0

    def token(self, *, stale: str | None = None, store: SecretStore | None = None) -> AccessToken:
        """Return a fresh token; exchange for a new one unless the current one is fresh and not `stale`.

        `store` is the asking run's: the exchange reads and rotates the refresh token through the run that
        needs it, since the run that started this exchanger may have ended (its claim no longer reads)."""
        cur = self.current
        if cur is not None and cur.value != stale and cur.fresh(time.time()):
            return cur
        self.current = self._exchange(store or self.store)
        return self.current

    def _exchange(self, store: SecretStore) -> AccessToken:
        if isinstance(self.auth, OAuth2RefreshAuth):
            url = self.auth.token_url
            refresh_name = self.auth.refresh_token.secret
            # The store, not the value resolved at run start: another run may have rotated it since.
            refresh = store.get(refresh_name) or self.secrets[refresh_name]
            form = {"grant_type": "refresh_token", "refresh_token": refresh, "client_id": self.auth.client_id,
                    "client_secret": self.secrets[self.auth.client_secret.secret]}
            if self.auth.scopes:
                form["scope"] = " ".join(self.auth.scopes)
        else:
            key = json.loads(self.secrets[self.auth.key_json.secret])
            url = key.get("token_uri") or "https://oauth2.googleapis.com/token"
            form = {"grant_type": JWT_BEARER, "assertion": _signed_jwt(key, url, self.auth.scopes)}
        try:
            self.egress.check_url(url)  # a URL without a host or scheme is refused here, not retried
            # Through the egress policy's transport: the name resolved once, every address checked, and the
            # connection made to a checked one (never a second lookup that could answer otherwise).
            with httpx.Client(transport=CheckedTransport(self.egress), timeout=30.0, follow_redirects=False) as client:
                response = client.post(url, data=form, headers={"Accept": "application/json"})
        except EgressRefused as exc:
            raise EgressRefused(f"token endpoint {url} refused: {exc}") from None
        except httpx.HTTPError as exc:
            raise HttpRetryable(f"token endpoint {url}: {type(exc).__name__}") from None
        self.exchanges += 1
        body = response.text
        if response.status_code >= 500:
            raise HttpRetryable(f"token endpoint {url} answered {response.status_code}: {api_message(body)}")
        if response.status_code != 200:
            data = _json_or_empty(body)
            error = data.get("error") if isinstance(data.get("error"), str) else ""
            advice = ("the grant was refused (invalid_grant): the credential needs re-authorisation; obtain a new "
                      "refresh token (or service-account key) and store it with `ipai secret set`"
                      if error == "invalid_grant" else "check the client id and secret")
            raise HttpFailed(f"token endpoint {url} answered {response.status_code} {error}: "
                             f"{api_message(body)}; {advice}", status=response.status_code)
        data = _json_or_empty(body)
        access = data.get("access_token")
        if not isinstance(access, str) or not access:
            raise HttpFailed(f"token endpoint {url} answered without an access_token")
        rotated = data.get("refresh_token")
        if isinstance(self.auth, OAuth2RefreshAuth) and isinstance(rotated, str) and rotated:
            # Stored before anything uses it: the old one is already spent at the provider.
            store.set(self.auth.refresh_token.secret, rotated)
            self.secrets[self.auth.refresh_token.secret] = rotated
        expires_in = float(data.get("expires_in") or 3600)
        now = time.time()
        return AccessToken(access, now + expires_in, now)


def _json_or_empty(body: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _signed_jwt(key: dict[str, Any], audience: str, scopes: tuple[str, ...]) -> str:
    """Return an RS256 JWT asserting the service account, valid one hour (the maximum Google accepts).

    Per ../shared/api-contracts/ga4.md section 2: claims iss, scope, aud (the token URL), iat, exp.
    """
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    for name in ("client_email", "private_key"):
        if not key.get(name):
            raise HttpFailed(f"the service-account key has no {name!r}; store the JSON key file Google issued")
    now = int(time.time())
    header = {"alg": "RS256", "typ": "JWT"}
    if key.get("private_key_id"):
        header["kid"] = key["private_key_id"]
    claims = {"iss": key["client_email"], "scope": " ".join(scopes), "aud": audience, "iat": now, "exp": now + 3600}
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}".encode()
    private = serialization.load_pem_private_key(key["private_key"].encode(), password=None)
    if not isinstance(private, rsa.RSAPrivateKey):
        raise HttpFailed("the service-account private key is not an RSA key")
    signature = private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode()}.{_b64url(signature)}"
