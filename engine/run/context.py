"""What every phase of one run shares (`RunContext`): the spec and the options it was asked with, the run's ids,
the control-plane connection its records go through, the source's secrets and the redactor that keeps them out
of every message, and the timings kept on the run row."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import psycopg

from engine.controlplane import locations, records
from engine.controlplane.db import Database
from engine.controlplane.settings import Settings
from engine.controlplane.vault import VaultSecretStore
from engine.core.faults import FaultPlan
from engine.core.secrets import Redactor
from engine.core.spec import ConnectorSpec
from engine.run.raytime import ensure_ray
from engine.run.sources import source_options
from layers.addressing import Address


@dataclass(frozen=True)
class RunOptions:
    """How a run was asked for (not part of the spec)."""

    full_refresh: bool = False
    trigger: str = "cli"
    dashboard: bool = False
    lease_seconds: float = 120.0
    """An active run whose heartbeat is older than this is taken as dead and marked failed."""
    faults: FaultPlan | None = None


@dataclass
class RunContext:
    """One run's shared values; `secrets` and `redact` are filled once the run has resolved its secrets."""

    spec: ConnectorSpec
    options: RunOptions
    settings: Settings
    db: Database
    conn: psycopg.Connection[Any]
    instance_id: str
    run_id: str
    store: VaultSecretStore
    address: Address
    """Where the instance's tables live (tenant, env, name)."""
    secrets: dict[str, str] = field(default_factory=dict)
    redact: Redactor = field(default_factory=lambda: Redactor(()))
    timings: dict[str, float] = field(default_factory=dict)
    servers: dict[str, str] = field(default_factory=dict)
    """Destination URL -> its server's identity (`locations.server_identity`), looked up once per run."""

    def log(self, level: str, event: str, message: str, **fields: Any) -> None:
        """Record one structured log line on the run."""
        records.log(self.conn, self.run_id, level, event, message, **fields)

    def server_of(self, url: str) -> str:
        """The identity of the Postgres server at `url`, asked once per run (claims and gold both need it);
        raises psycopg.Error when it cannot be reached."""
        if url not in self.servers:
            self.servers[url] = locations.server_identity(url)
        return self.servers[url]

    @cached_property
    def source_options(self) -> dict[str, Any]:
        """What the run lets sources reach (`egress`, `control_plane`), read once and added to the options of
        every plan and read task (engine/run/sources.py)."""
        return source_options(self.settings, self.db)

    def connect_ray(self) -> None:
        """Join (or start) Ray once per run, timing it."""
        if "ray_connect_s" in self.timings:
            return
        t_ray = time.monotonic()
        ensure_ray(self.settings.ray_address, dashboard=self.options.dashboard)
        self.timings["ray_connect_s"] = round(time.monotonic() - t_ray, 3)
