"""Scratch databases on the test Postgres: created for a test or a module, dropped when it is done."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from engine.controlplane.db import Database, migrate, with_database


def scratch_name(prefix: str = "ipai_test") -> str:
    """A database name no other test uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@contextmanager
def scratch_database(admin_url: str, *, name: str | None = None) -> Iterator[Database]:
    """Create an empty database (`name`, else a fresh `ipai_test_*`) on the server `admin_url` points at; drop
    it on leaving, whatever connections still hold it."""
    name = name or scratch_name()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    try:
        yield Database(with_database(admin_url, name))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


def migrated(database: Database) -> Database:
    """Apply the control plane's migrations to `database`; return it."""
    with database.connect() as conn:
        migrate(conn)
    return database
