"""One Ray actor per credential: the shared request budget and the single-flight token exchange.

Every task of every run that uses a credential finds the same actor by name (namespace `ipai`), so the
budget is one bucket and a refresh happens once for all of them. The actor outlives runs (detached)
and exits after `idle_exit_s` without calls, taking nothing durable with it: rotated refresh tokens
are in the secret store and quotas are re-learned from the API's headers. Callers that find it gone
(idle exit, or its node lost) start a new one through `CredentialRef.handle` and carry on.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import ray

from connectors.httpkit.auth import AccessToken, AnyAuth, TokenExchange, needs_exchange
from connectors.httpkit.budget import Budget, Grant
from connectors.httpkit.components import RateLimit
from connectors.httpkit.egress import EgressPolicy
from engine.core.secrets import SecretStore, secret_refs
from engine.core.spec import OAuth2RefreshAuth

NAMESPACE = "ipai"


@dataclass(frozen=True)
class CredentialRef:
    """Everything needed to find or start a credential's actor; a value carried by streams."""

    id: str
    auth: AnyAuth
    rate_limit: RateLimit
    max_wait_s: float
    store: SecretStore
    egress: EgressPolicy
    idle_exit_s: float = 300.0

    @classmethod
    def of(cls, *, scope: str, auth: AnyAuth, rate_limit: RateLimit, max_wait_s: float,
           store: SecretStore, egress: EgressPolicy, secrets: dict[str, str]) -> CredentialRef:
        """Name the credential by its tenant (whose secrets it rotates), its API, its auth settings and a digest
        of its fixed secret values (a refresh token rotates: it is the same credential before and after)."""
        fixed = _names(auth) - ({auth.refresh_token.secret} if isinstance(auth, OAuth2RefreshAuth) else set())
        digest = hashlib.sha256()
        for part in (store.identity, scope, auth.model_dump_json(), rate_limit.model_dump_json(),
                     *sorted(f"{k}={v}" for k, v in secrets.items() if k in fixed)):
            digest.update(part.encode())
            digest.update(b"\0")
        idle = float(os.environ.get("IPAI_CREDENTIAL_IDLE_S", "300"))
        return cls(digest.hexdigest()[:16], auth, rate_limit, max_wait_s, store, egress, idle)

    def handle(self, secrets: dict[str, str]) -> Any:
        """Return the credential's actor, starting it if no task or run has yet."""
        return ray.remote(CredentialActor).options(
            name=f"credential-{self.id}", namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
            num_cpus=0, max_concurrency=64, max_restarts=0,
        ).remote(self, {k: v for k, v in secrets.items() if k in _names(self.auth)})


def _names(auth: AnyAuth) -> set[str]:
    return {ref.secret for _, ref in secret_refs(auth)}


class CredentialActor:
    """Serves budget and tokens to tasks; threaded, with a lock that makes token exchanges single-flight."""

    def __init__(self, ref: CredentialRef, secrets: dict[str, str]) -> None:
        rl = ref.rate_limit
        self.budget = Budget(rate=rl.requests_per_second, burst=rl.burst, max_wait_s=ref.max_wait_s,
                             reserve=rl.reserve)
        self.exchange = (TokenExchange(ref.auth, dict(secrets), ref.store, ref.egress)  # type: ignore[arg-type]
                         if needs_exchange(ref.auth) else None)
        self.lock = threading.Lock()
        self.token_lock = threading.Lock()  # apart from `lock`: an exchange must not stall the budget
        self.last_call = time.monotonic()
        self.idle_exit_s = ref.idle_exit_s
        threading.Thread(target=self._exit_when_idle, daemon=True).start()

    def _exit_when_idle(self) -> None:
        while True:
            time.sleep(min(30.0, self.idle_exit_s / 2))
            if time.monotonic() - self.last_call > self.idle_exit_s:
                # The actor is never restarted (max_restarts=0): its name is free, and the next task that
                # needs the credential starts a new one, re-learning quotas from the API's headers.
                os._exit(0)

    def acquire(self, scope: str = "") -> Grant:
        with self.lock:
            self.last_call = time.monotonic()
            return self.budget.acquire(time.time(), scope)

    def paused(self, scope: str = "") -> bool:
        with self.lock:
            return self.budget.paused(time.time(), scope)

    def observe(self, remaining: int, reset_at: float, limit: int | None = None, window: str = "requests",
                scope: str = "") -> None:
        with self.lock:
            self.budget.observe(remaining=remaining, reset_at=reset_at, now=time.time(), limit=limit, window=window,
                                scope=scope)

    def pause(self, seconds: float, reason: str) -> None:
        with self.lock:
            self.budget.pause(time.time() + seconds, reason)

    def token(self, stale: str | None = None, store: SecretStore | None = None) -> AccessToken:
        """Return a fresh access token; exchanges at most once at a time, for every caller, through the
        caller's run's `store` (the actor outlives the run that started it)."""
        assert self.exchange is not None, "token() on a credential without a token exchange"
        self.last_call = time.monotonic()
        with self.token_lock:
            return self.exchange.token(stale=stale, store=store)

    def stats(self) -> dict[str, Any]:
        return {"granted": self.budget.granted, "exchanges": self.exchange.exchanges if self.exchange else 0,
                "longest_wait_s": max(self.budget.waits, default=0.0)}
