"""SQL helpers every layer shares: the one way identifiers are quoted, and errors from the database
described in one line."""

from __future__ import annotations


def quote_ident(name: str) -> str:
    """Quote an SQL identifier (the one place identifiers are quoted)."""
    return '"' + name.replace('"', '""') + '"'


def describe_error(exc: BaseException) -> str:
    """One line for an error from ADBC or psycopg: Postgres's own message (ADBC's text ends with the SQLSTATE on
    a line of its own, and an error raised in a PL/pgSQL function with its CONTEXT lines, which is all a first-
    or last-line summary would keep)."""
    details = dict(getattr(exc, "details", None) or ())
    primary = details.get(b"PG_DIAG_MESSAGE_PRIMARY")
    if isinstance(primary, bytes):
        state = getattr(exc, "sqlstate", None)
        return primary.decode(errors="replace") + (f" (SQLSTATE {state})" if state else "")
    diag = getattr(exc, "diag", None)  # psycopg: the message alone, not the PL/pgSQL context lines after it
    if diag is not None and getattr(diag, "message_primary", None):
        extra = [f"{label}: {v}" for label, v in (("detail", diag.message_detail), ("hint", diag.message_hint)) if v]
        return str(diag.message_primary) + (f" ({'; '.join(extra)})" if extra else "")
    return " ".join(str(exc).split())
