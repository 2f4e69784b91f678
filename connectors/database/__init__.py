"""The `database` source (FR-010): tables of PostgreSQL, MySQL / MariaDB and SQLite, read in parallel key
ranges straight into Arrow, incrementally by a cursor column, or (PostgreSQL) by following its write-ahead log.

    spec.py      the spec models: DatabaseSpec, its DatabaseSource (URL, tables) and each TableSpec
    guard.py     SourceAccess (the egress policy and the control plane's identity a run grants) and the check
                 that refuses the control-plane database after connecting, before anything is read
    stream.py    DatabaseStream: planning (catalog, key ranges, cursor window) and reading, one Ray task a range
    dialects/    what differs between databases (driver, catalog, quoting, bound values, types), one module each
    cdc/         PostgreSQL change data capture (`sync_mode: cdc`): slots and planning, reading changes, pgoutput

Imports run one way: stream -> cdc -> dialects -> guard, spec. This package's own names (below) are what the
connector registry and other connectors use; no module inside it imports the package.
"""

from __future__ import annotations

from connectors.database.guard import SourceAccess
from connectors.database.spec import DatabaseSource, DatabaseSpec, TableSpec, checked_url
from connectors.database.stream import DatabaseReader, DatabaseStream, streams

__all__ = ["DatabaseReader", "DatabaseSource", "DatabaseSpec", "DatabaseStream", "SourceAccess", "TableSpec",
           "checked_url", "streams"]
