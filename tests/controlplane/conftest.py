"""Fixtures for the control-plane tests: a migrated database that one test module shares."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from engine.controlplane.db import Database
from tests.support.databases import migrated, scratch_database


@pytest.fixture(scope="module")
def migrated_database(admin_url: str) -> Iterator[Database]:
    """A freshly migrated database for one module; its tests leave it as they found it (rolled back)."""
    with scratch_database(admin_url) as db:
        yield migrated(db)
