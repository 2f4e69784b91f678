"""Drop an instance's change data capture slots (`ipai cdc drop`), so the source server frees the WAL they hold.

The slots and publications live on the source server (connectors/database/cdc/replication.py makes them);
which ones belong to an instance, and the source URL (perhaps a secret of the instance's tenant, read here as
admin), are control-plane facts. Dropping a stream's slot resets that stream's sync state: the next run
takes a new snapshot.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg

from connectors.database.cdc import replication
from connectors.database.spec import DatabaseSpec
from connectors.database import DatabaseStream, streams
from engine.controlplane import records, state
from engine.controlplane.vault import value_as_admin
from engine.core.errors import ConfigError
from engine.core.spec import SecretRef


@dataclass(frozen=True)
class CdcStreams:
    """The cdc streams of one instance chosen for dropping, and the source server their slots are on."""

    instance: dict[str, Any]
    """The instance's record (`records.find_instance`)."""
    source_url: str | SecretRef
    streams: tuple[DatabaseStream, ...]

    @property
    def slots(self) -> list[str]:
        """The replication slot (and publication) name of each stream."""
        return [replication.slot_name(s) for s in self.streams]


def find_cdc_streams(conn: psycopg.Connection[Any], instance: str, *, env: str | None = None,
                     stream: str | None = None) -> CdcStreams:
    """Return the cdc streams of the instance (only `stream`, when given); raise ConfigError when the instance
    reads no database or has no such stream."""
    inst = records.find_instance(conn, instance, env=env)
    spec = records.instance_spec(conn, inst)
    if not isinstance(spec, DatabaseSpec):
        raise ConfigError(f"instance {inst['name']} reads {spec.source_type}: only database sources have cdc streams")
    chosen = tuple(s for s in streams(spec) if s.cdc and stream in (None, s.name))
    if not chosen:
        raise ConfigError(f"instance {inst['name']} has no cdc stream" + (f" named {stream}" if stream else ""))
    return CdcStreams(inst, spec.source.url, chosen)


def drop_slots(conn: psycopg.Connection[Any], found: CdcStreams) -> Iterator[tuple[str, list[str]]]:
    """Drop each stream's slot and publication and reset the stream's state, one stream at a time; yield the
    stream's name and what was dropped (nothing, when it had no slot) as each is done.

    A slot or publication another instance owns, or a slot a run is reading, is refused with ConfigError."""
    url = value_as_admin(conn, str(found.instance["tenant_id"]), found.source_url, field="source.url")
    instance_id = str(found.instance["id"])
    for s in found.streams:
        removed = replication.drop(url, replication.slot_name(s), instance_id)
        state.reset(conn, instance_id, s.name)
        yield s.name, removed
