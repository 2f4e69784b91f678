"""What a run reports of a database error: the server's own words, never the lines PostgreSQL adds after them
(an error raised inside a PL/pgSQL function ends with its CONTEXT: the function and line, not the reason)."""

from __future__ import annotations

import psycopg
import pytest

from engine.controlplane.db import Database
from engine.run.raytime import describe


def test_an_error_raised_in_a_function_is_described_by_its_reason(database: Database) -> None:
    with psycopg.connect(database.url, autocommit=True) as conn:
        conn.execute("create function pg_temp.refuse() returns void language plpgsql as"
                     " $$ begin raise exception 'lease lost: the run is no longer yours'; end $$")
        with pytest.raises(psycopg.Error) as raised:
            conn.execute("select pg_temp.refuse()")
    assert str(raised.value).splitlines()[-1].startswith("CONTEXT:"), "what a last-line summary used to show"
    assert describe(raised.value) == "RaiseException: lease lost: the run is no longer yours"
