"""Issue and check access tokens the way an OAuth 2.0 authorisation server does.

Two grants, as the connectors meet them: `refresh_token` (client id and secret in the form or HTTP Basic;
each refresh token works once when rotation is on, as Google, Salesforce and HubSpot-style servers do) and
`urn:ietf:params:oauth:grant-type:jwt-bearer` (a service account signs an RS256 JWT whose `aud` is this
token URL and whose lifetime is at most an hour, as Google's token endpoint expects). Error bodies follow
RFC 6749 section 5.2 with Google's descriptions. Tokens given with `--token` are accepted forever.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEFAULT_TTL_S = 3600.0
MAX_ASSERTION_LIFETIME_S = 3600
CLOCK_LEEWAY_S = 60


@dataclass(frozen=True)
class OAuthConfig:
    token_url: str
    client_id: str | None = None
    client_secret: str | None = None
    refresh_token: str | None = None
    rotate_refresh_tokens: bool = True
    service_account_email: str | None = None
    service_account_public_key: bytes | None = None  # PEM


@dataclass(frozen=True)
class Grant:
    """The token endpoint's answer: HTTP status, JSON body and a note for the request log."""

    status: int
    body: dict[str, Any]
    note: str


def _error(status: int, error: str, description: str, note: str = "invalid_grant") -> Grant:
    return Grant(status, {"error": error, "error_description": description}, note)


def _b64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class TokenIssuer:
    """Which access and refresh tokens are valid now; grants new ones and revokes them on request."""

    def __init__(self, config: OAuthConfig, static_tokens: list[str]) -> None:
        self._config = config
        self._static = frozenset(static_tokens)
        self._access: dict[str, float] = {}  # access token -> expiry (epoch seconds)
        self._refresh: set[str] = {config.refresh_token} if config.refresh_token else set()
        self._public_key = None
        if config.service_account_public_key:
            key = serialization.load_pem_public_key(config.service_account_public_key)
            if not isinstance(key, rsa.RSAPublicKey):
                raise ValueError("--service-account-public-key must be an RSA public key (PEM)")
            self._public_key = key

    def check(self, token: str, now: float) -> str | None:
        """None when `token` may call the API now, else the log note saying why not."""
        if token in self._static:
            return None
        expiry = self._access.get(token)
        if expiry is None:
            return "bad-credentials"
        return None if now < expiry else "expired-token"

    def expire_access_tokens(self) -> int:
        """Make every issued access token expired now (static tokens stay valid); return how many."""
        for token in self._access:
            self._access[token] = 0.0
        return len(self._access)

    def revoke_all(self) -> None:
        """Invalidate every refresh and issued access token: the user must re-authorise."""
        self._refresh.clear()
        self._access.clear()

    def valid_refresh_tokens(self) -> int:
        return len(self._refresh)

    def grant(self, form: dict[str, str], basic: tuple[str, str] | None, *, now: float, ttl_s: float) -> Grant:
        kind = form.get("grant_type")
        if kind == "refresh_token":
            return self._refresh_grant(form, basic, now=now, ttl_s=ttl_s)
        if kind == JWT_BEARER:
            return self._jwt_grant(form.get("assertion", ""), now=now, ttl_s=ttl_s)
        return _error(400, "unsupported_grant_type", f"Unsupported grant type: {kind}", "unsupported_grant_type")

    def _issue(self, now: float, ttl_s: float) -> dict[str, Any]:
        token = "emu_" + secrets.token_urlsafe(24)
        self._access[token] = now + ttl_s
        return {"access_token": token, "expires_in": int(ttl_s) if ttl_s >= 1 else ttl_s, "token_type": "Bearer"}

    def _refresh_grant(self, form: dict[str, str], basic: tuple[str, str] | None, *, now: float,
                       ttl_s: float) -> Grant:
        client_id, client_secret = basic or (form.get("client_id"), form.get("client_secret"))
        cfg = self._config
        if cfg.client_id is None or client_id != cfg.client_id or client_secret != cfg.client_secret:
            return _error(401, "invalid_client", "The OAuth client was not found.", "invalid_client")
        presented = form.get("refresh_token")
        if not presented:
            return _error(400, "invalid_request", "Missing required parameter: refresh_token", "invalid_request")
        if presented not in self._refresh:
            return _error(400, "invalid_grant", "Token has been expired or revoked.")
        body = self._issue(now, ttl_s)
        if cfg.rotate_refresh_tokens:
            self._refresh.discard(presented)
            body["refresh_token"] = "emr_" + secrets.token_urlsafe(24)
            self._refresh.add(body["refresh_token"])
        return Grant(200, body, "refresh")

    def _jwt_grant(self, assertion: str, *, now: float, ttl_s: float) -> Grant:
        if self._public_key is None:
            return _error(400, "invalid_grant", "Invalid grant: account not found")
        try:
            header_b64, claims_b64, signature_b64 = assertion.split(".")
            header = json.loads(_b64url(header_b64))
            claims = json.loads(_b64url(claims_b64))
            signature = _b64url(signature_b64)
        except (ValueError, binascii.Error):
            return _error(400, "invalid_grant", "Invalid JWT: the assertion is not a well-formed JWT.")
        if not isinstance(header, dict) or header.get("alg") != "RS256" or not isinstance(claims, dict):
            return _error(400, "invalid_grant", "Invalid JWT: the header must name alg RS256.")
        try:
            self._public_key.verify(signature, f"{header_b64}.{claims_b64}".encode(), padding.PKCS1v15(),
                                    hashes.SHA256())
        except InvalidSignature:
            return _error(400, "invalid_grant", "Invalid JWT Signature.")
        if claims.get("iss") != self._config.service_account_email:
            return _error(400, "invalid_grant", "Invalid grant: account not found")
        if claims.get("aud") != self._config.token_url:
            return _error(400, "invalid_grant", "Invalid JWT: Failed audience check. The expected audience is "
                                                f"{self._config.token_url}.")
        iat, exp = claims.get("iat"), claims.get("exp")
        if (not isinstance(iat, (int, float)) or not isinstance(exp, (int, float))
                or not 0 < exp - iat <= MAX_ASSERTION_LIFETIME_S
                or iat > now + CLOCK_LEEWAY_S or exp < now - CLOCK_LEEWAY_S):
            return _error(400, "invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in "
                                                "a reasonable timeframe. Check your iat and exp values in the JWT "
                                                "claim.")
        if not claims.get("scope"):
            return _error(400, "invalid_scope", "Invalid OAuth scope or ID token audience provided.",
                          "invalid_scope")
        return Grant(200, self._issue(now, ttl_s), "jwt")
