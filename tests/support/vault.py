"""The test database's Vault, as an admin sees it."""

from __future__ import annotations

import psycopg

from engine.controlplane.db import Database
from engine.controlplane.settings import Settings
from engine.controlplane.vault import set_secret, vault_session


class Vault:
    """The test database's Vault, as an admin sees it (the local tenant, the key under the test's home)."""

    def __init__(self, settings: Settings, database: Database) -> None:
        self.settings, self.database = settings, database

    def set(self, name: str, value: str) -> None:
        set_secret(self.database, self.settings.home, name, value)

    def _admin(self) -> psycopg.Connection:
        return self.database.with_session(vault_session(self.settings.home)).connect()

    def get(self, name: str) -> str | None:
        with self._admin() as conn:
            row = conn.execute("select decrypted_secret from vault.decrypted_secrets"
                               " where name = 'ipai/' || ipai.current_tenant() || '/' || %s", (name,)).fetchone()
        return row[0] if row else None

    def delete(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute("delete from vault.secrets where name = 'ipai/' || ipai.current_tenant() || '/' || %s",
                         (name,))
