"""Fixtures for the control-plane tests: a migrated database that one test module shares."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from engine.controlplane.db import Database, migrate, with_database


@pytest.fixture(scope="module")
def migrated_database(admin_url: str) -> Iterator[Database]:
    """A freshly migrated database for one module; its tests leave it as they found it (rolled back)."""
    name = f"ipai_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    db = Database(with_database(admin_url, name))
    try:
        with db.connect() as conn:
            migrate(conn)
        yield db
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')

