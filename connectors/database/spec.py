"""The `database` source's spec models: the database by URL, and the tables (or queries) read from it.

Values only (STYLE 3): the streams that read them are in connectors/database/stream.py.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from engine.core.spec import NAME_PATTERN, ConnectorSpec, SecretRef, SpecModel
from engine.core.urls import credential_in

class TableSpec(SpecModel):
    """One table, or one query, to sync as a stream."""

    table: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")
    """`schema.table`, or `table` in `public`."""
    query: str | None = None
    """A SELECT (or WITH ... SELECT) read instead of a table; needs `name:`. `cursor`, `primary_key` and
    `partition_on` then name columns of its result."""
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    """Stream name (bronze table `raw_<spec name>_<name>`); defaults to the table's name in lower case."""
    cursor: str | None = None
    """Column that grows when a row changes (`updated_at`, `write_date`, a sequence); needed for incremental."""
    primary_key: tuple[str, ...] = ()
    """Defaults to the table's primary key (a query has none unless given)."""
    partition_on: str | None = None
    """Integer column to cut into ranges; defaults to a single-column integer primary key."""
    slot: str | None = Field(default=None, pattern=r"^[a-z0-9_]{1,63}$")
    """sync_mode cdc (PostgreSQL): the replication slot and publication; defaults to `ipai_<spec>_<stream>`."""

    @field_validator("query")
    @classmethod
    def _one_select(cls, value: str | None) -> str | None:
        if value is None:
            return value
        text = value.strip().rstrip(";").rstrip()
        if not re.match(r"(?is)^(select|with)\b", text):
            raise ValueError("a query stream reads one SELECT (or WITH ... SELECT) statement")
        return text

    @model_validator(mode="after")
    def _table_or_query(self) -> TableSpec:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of `table:` and `query:`")
        if self.query is not None and self.name is None:
            raise ValueError("a query stream needs `name:` (its bronze table is raw_<spec name>_<name>)")
        return self

    @property
    def schema_name(self) -> str:
        assert self.table is not None, "a query stream has no schema"
        return self.table.split(".")[0] if "." in self.table else "public"

    @property
    def table_name(self) -> str:
        assert self.table is not None, "a query stream has no table"
        return self.table.split(".")[-1]

    @property
    def stream_name(self) -> str:
        return self.name or self.table_name.lower()

    @property
    def label(self) -> str:
        """How messages name what the stream reads."""
        return self.table or f"the query of stream {self.name}"


def checked_url(value: str | SecretRef, schemes: tuple[str, ...], advice: str) -> str | SecretRef:
    """A source database URL from a spec: one of `schemes`, and never a password in clear."""
    if isinstance(value, str):
        found = credential_in(value)
        if found:
            raise ValueError(f"the URL carries {found}; store the whole URL as a secret "
                             "(`ipai secret set NAME`) and write url: {secret: NAME}")
        if not value.startswith(schemes):
            raise ValueError(advice)
    return value


class DatabaseSource(SpecModel):
    """A database reached by URL, and the tables to read from it."""

    url: str | SecretRef
    """`postgresql://user@host:port/db` or `sqlite:///absolute/path.db`; a URL with a password must be a
    secret reference."""
    tables: tuple[TableSpec, ...] = Field(min_length=1)
    partition_rows: int = Field(default=500_000, ge=1_000)
    """About how many rows one partition (one Ray task) reads."""
    lookback_s: int = Field(default=0, ge=0)
    """Re-read this many seconds before the stored cursor of timestamp cursors (late commits)."""

    @field_validator("tables")
    @classmethod
    def _one_stream_per_name(cls, tables: tuple[TableSpec, ...]) -> tuple[TableSpec, ...]:
        names = [t.stream_name for t in tables]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"two tables make stream {dupes[0]!r}; give one a `name:`")
        return tables

    @field_validator("url")
    @classmethod
    def _no_password_in_clear(cls, value: str | SecretRef) -> str | SecretRef:
        return checked_url(value, ("postgresql://", "postgres://", "mysql://", "mariadb://", "sqlite:///"),
                           "use a postgresql://, mysql:// (MySQL, MariaDB) or sqlite:/// URL")


class DatabaseSpec(ConnectorSpec):
    """A spec reading tables of a database."""

    source_type: Literal["database"]
    source: DatabaseSource

    @model_validator(mode="after")
    def _no_query_follows_the_log(self) -> DatabaseSpec:
        for t in self.source.tables:
            if t.query is not None and self.stream_mode(t.stream_name) == "cdc":
                raise ValueError(f"stream {t.stream_name}: a query has no change log to follow (sync_mode cdc); "
                                 "read it incrementally, or stream its tables with cdc")
        return self
