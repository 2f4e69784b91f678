"""The dialects of the `database` source (connectors/database/stream.py): what differs between databases.

PostgreSQL (`postgresql://`) and SQLite files (`sqlite:///path`) through ADBC, MySQL and MariaDB
(`mysql://`) through connectorx: drivers that hand Arrow batches over without Python objects per row; a
`Dialect` holds what differs (connecting, catalog, quoting, bound values, types), and `dialect_for` picks
one by the URL's scheme.

    base.py      Column, Catalog (planning queries on one connection), the Dialect base: the partition key
                 and its key ranges, the same on every database
    postgres.py  PostgresDialect: faithful type mapping, prepared query description, CDC snapshot import
    sqlite.py    SqliteDialect
    mysql.py     MysqlDialect (MySQL and MariaDB)

A query stream's columns and types come from the database's own description of its result, without
running it and without writing to the database: PostgreSQL prepares it (result types and modifiers),
MySQL and MariaDB run it with `limit 0` (the result's description), SQLite reads a temporary view of it.
Identifiers are quoted through one helper (`engine.core.sql.quote_ident`); values are always bound.

The modules of this package import each other (never this package); the rest of the source imports this
package's names.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from connectors.database.dialects.base import Catalog, Column, Dialect, driver_message, first_line
from connectors.database.dialects.mysql import MysqlDialect
from connectors.database.dialects.postgres import PostgresDialect
from connectors.database.dialects.sqlite import SqliteDialect
from engine.core.errors import ConfigError

__all__ = ["DIALECTS", "Catalog", "Column", "Dialect", "MysqlDialect", "PostgresDialect", "SqliteDialect",
           "dialect_for", "driver_message", "first_line"]

DIALECTS: dict[str, Dialect] = {"postgresql": PostgresDialect(), "postgres": PostgresDialect(),
                                "sqlite": SqliteDialect(), "mysql": MysqlDialect(), "mariadb": MysqlDialect()}


def dialect_for(url: str) -> Dialect:
    scheme = urlsplit(url).scheme
    if scheme not in DIALECTS:
        raise ConfigError(f"source database URL scheme {scheme!r} is not supported; "
                          "use postgresql://, mysql:// (MySQL, MariaDB) or sqlite:///")
    return DIALECTS[scheme]
