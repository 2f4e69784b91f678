"""Settings: where the control-plane database, the lakehouse and Ray are.

Command-line options override the environment (`IPAI_DATABASE_URL`, `IPAI_LAKEHOUSE_URI`,
`RAY_ADDRESS`, `IPAI_HOME`, `IPAI_TENANT`, `IPAI_WORKER_DATABASE_URL`), which overrides
`<home>/config.toml`, which overrides the defaults: an embedded PostgreSQL in `<home>/pgdata`, a lakehouse
folder `<home>/lakehouse`, a local Ray, the `local` tenant, and workers connecting as the `ipai_worker`
role to the control-plane database.
"""

from __future__ import annotations

import json
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from engine.core.errors import ConfigError

CONFIG_KEYS = ("database_url", "lakehouse_uri", "ray_address", "tenant", "worker_database_url")
WORKER_ROLE = "ipai_worker"


@dataclass(frozen=True)
class Settings:
    """Resolved settings for one command or run."""

    home: Path
    database_url: str | None
    """None means: start the embedded PostgreSQL in `home / "pgdata"`."""
    lakehouse_uri: str
    ray_address: str | None
    tenant: str = "local"
    """Tenant (name or id) whose connectors, runs and secrets the CLI acts on."""
    worker_database_url: str | None = None
    """How workers and schedulers connect; None means the control-plane URL as role `ipai_worker`."""

    @property
    def embedded_pgdata(self) -> Path:
        return self.home / "pgdata"

    @classmethod
    def resolve(
        cls,
        *,
        database_url: str | None = None,
        lakehouse_uri: str | None = None,
        ray_address: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Combine options, environment, config file and defaults, in that order of precedence."""
        env = os.environ if environ is None else environ
        home = Path(env.get("IPAI_HOME") or Path.home() / ".ipai").expanduser().resolve()
        file_values = _read_config(home / "config.toml")
        lakehouse = (lakehouse_uri or env.get("IPAI_LAKEHOUSE_URI") or file_values.get("lakehouse_uri")
                     or str(home / "lakehouse"))
        if "://" not in lakehouse:
            lakehouse = str(Path(lakehouse).expanduser().resolve())
        return cls(
            home=home,
            database_url=database_url or env.get("IPAI_DATABASE_URL") or file_values.get("database_url"),
            lakehouse_uri=lakehouse,
            ray_address=ray_address or env.get("RAY_ADDRESS") or file_values.get("ray_address")
            or _local_head_address(home),
            tenant=env.get("IPAI_TENANT") or file_values.get("tenant") or "local",
            worker_database_url=env.get("IPAI_WORKER_DATABASE_URL") or file_values.get("worker_database_url"),
        )


@dataclass(frozen=True)
class LocalHead:
    """The long-lived local Ray head of one IPAI home, as `ipai ray start` recorded it (`engine.run.localray`)."""

    address: str
    dashboard_url: str
    temp_dir: str

    @classmethod
    def read(cls, home: Path) -> LocalHead | None:
        path = home / "ray.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(data["address"], data["dashboard_url"], data["temp_dir"])

    def alive(self) -> bool:
        host, port = self.address.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return True
        except OSError:
            return False


def _local_head_address(home: Path) -> str | None:
    """Return the address of the long-lived local Ray head (`ipai ray start`) when it is running."""
    head = LocalHead.read(home)
    return head.address if head is not None and head.alive() else None


def _read_config(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc}); fix or remove the file") from None
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key {', '.join(unknown)}; known keys: {', '.join(CONFIG_KEYS)}")
    return {k: str(v) for k, v in data.items()}


def as_role(url: str, role: str) -> str:
    """Return `url` logging in as `role` without a password (trust or peer authentication, as on a local
    server; elsewhere give the role a password and set IPAI_WORKER_DATABASE_URL)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{role}@{host}", parts.path, parts.query, parts.fragment))
