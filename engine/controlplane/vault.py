"""Secrets referenced by specs (`{secret: NAME}`): kept in the control plane's Vault, resolved by runs.

`ipai secret set NAME` (value from stdin) stores one for the CLI's tenant through `public.secret_set`;
on Supabase that is Supabase Vault, on plain PostgreSQL the Vault-compatible schema of the migrations,
whose key stays outside the database: IPAI_VAULT_KEY, else the owner-only file `<IPAI_HOME>/vault.key`
(made on first use), sent to the server at connection start for that session alone. A run resolves every
reference before its first request, through `ipai.claimed_secret_read` for a run a worker claimed (only
with that claim's token, while its lease is live) or `ipai.secret_read` for one the CLI started (both logged on
the run), and fails naming a missing secret. Values are masked in the text the platform writes (logs,
errors) by `engine.core.secrets.Redactor`, whose docstring says what that covers and what it does not (a
source that echoes a token into a record lands it in bronze). A value shorter than `MIN_SECRET_LENGTH` (8)
is refused when stored: it could not be masked without mangling ordinary text.
"""

from __future__ import annotations

import base64
import os
import secrets as random_source
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from engine.core.errors import ConfigError, LeaseLost
from engine.core.secrets import check_secret_value
from engine.core.private import private_dir
from engine.core.spec import SecretRef

KEY_ENV = "IPAI_VAULT_KEY"
KEY_FILE = "vault.key"


def vault_key(home: Path, *, create: bool = False) -> str | None:
    """Return the Vault key for plain PostgreSQL (IPAI_VAULT_KEY, else <home>/vault.key); make the file if
    asked and there is none."""
    env = os.environ.get(KEY_ENV)
    if env:
        return env.strip()
    path = home / KEY_FILE
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    if not create:
        return None
    private_dir(home)
    key = base64.b64encode(random_source.token_bytes(32)).decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
    return key


def vault_session(home: Path, *, create: bool = False) -> dict[str, str]:
    """Connection settings that carry the Vault key, when there is one."""
    key = vault_key(home, create=create)
    return {"ipai.vault_key": key} if key else {}


def is_compat_vault(conn: psycopg.Connection[Any]) -> bool:
    """True on plain PostgreSQL (the migrations' Vault, which needs a key), false on Supabase Vault."""
    return conn.execute("select to_regprocedure('vault._key()') is not null").fetchone() == (True,)


@dataclass(frozen=True)
class VaultSecretStore:
    """The secrets of one run's tenant, read and rotated through the run.

    A worker's run carries the claim token `ipai.claim_run` gave it: the store sends it at connection start
    (`ipai.claim_token`, never in a statement) and reads through `ipai.claimed_secret_read`, which answers
    only while that claim's lease is live. A run the CLI started as the database owner has no claim and reads
    through `ipai.secret_read`, which the worker role may not call."""

    url: str = field(repr=False)
    run_id: str
    tenant_id: str
    key: str | None = field(default=None, repr=False)
    claim_token: str | None = field(default=None, repr=False)

    @property
    def identity(self) -> str:
        return self.tenant_id

    def _connect(self) -> psycopg.Connection[Any]:
        from engine.controlplane.db import connect

        session = {"ipai.vault_key": self.key} if self.key else {}
        if self.claim_token:
            session["ipai.claim_token"] = self.claim_token
        return connect(self.url, session=session or None)

    def get(self, name: str) -> str | None:
        read = "ipai.claimed_secret_read" if self.claim_token else "ipai.secret_read"
        row = self._call(f"select {read}(%s, %s)", (self.run_id, name), name)
        return None if row is None else row[0]

    def set(self, name: str, value: str) -> None:
        rotate = "ipai.claimed_secret_rotate" if self.claim_token else "ipai.secret_rotate"
        self._call(f"select {rotate}(%s, %s, %s)", (self.run_id, name, value), name)

    def _call(self, query: str, params: tuple[str, ...], name: str) -> tuple[Any, ...] | None:
        with self._connect() as conn:
            try:
                return conn.execute(query, params).fetchone()
            except psycopg.errors.InsufficientPrivilege as exc:
                # The server's reason alone, not its PL/pgSQL context lines: the run ended, its lease lapsed,
                # or this store holds no claim on it.
                raise LeaseLost(f"secret {name!r} is not readable for run {self.run_id}: "
                                f"{exc.diag.message_primary}") from None


def read_as_admin(conn: psycopg.Connection[Any], tenant_id: str, name: str) -> str | None:
    """A tenant's secret read directly from the Vault, for admin commands outside a run (`ipai cdc drop`);
    needs a connection that may read `vault.decrypted_secrets` (and carries the key on plain PostgreSQL)."""
    row = conn.execute("select decrypted_secret from vault.decrypted_secrets where name = %s",
                       (f"ipai/{tenant_id}/{name}",)).fetchone()
    return None if row is None else row[0]


def value_as_admin(conn: psycopg.Connection[Any], tenant_id: str, value: str | SecretRef, *, field: str) -> str:
    """Return `value`, or the tenant's secret it references (read as admin, see `read_as_admin`); raise
    ConfigError naming the spec's `field` when that secret is not set."""
    if not isinstance(value, SecretRef):
        return value
    found = read_as_admin(conn, tenant_id, value.secret)
    if found is None:
        raise ConfigError(f"{field}: secret {value.secret!r} is not set in the Vault")
    return found


def store_secret(conn: psycopg.Connection[Any], name: str, value: str) -> bool:
    """Store a secret for the session's tenant; return True if it is new. Raise ConfigError with the reason."""
    check_secret_value(name, value)
    row = conn.execute("select public.secret_set(%s, %s)", (name, value)).fetchone()
    result = row[0] if row else {}
    if not result.get("ok"):
        raise ConfigError(f"secret {name!r} not stored: {result.get('error', {}).get('message', 'unknown error')}")
    return bool(result["created"])


def set_secret(db: Any, home: Path, name: str, value: str) -> bool:
    """Migrate the control plane `db` if need be and store a secret for its session's tenant (the key made
    under `home` on plain PostgreSQL when there is none); return True if it is new."""
    from engine.controlplane.db import migrate

    with db.connect() as conn:
        migrate(conn)
        session = vault_session(home, create=is_compat_vault(conn))
    with db.with_session(session).connect() as conn:
        return store_secret(conn, name, value)


def list_secrets(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    row = conn.execute("select public.secret_list()").fetchone()
    return list(row[0]["secrets"]) if row else []


