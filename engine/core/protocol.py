"""The connector protocol: Stream (plans, on the driver), Partition (a value), Reader (inside a Ray task).

A connector module offers streams for a spec. The driver asks each stream to `plan` its partitions
from the stored state, runs one Ray task per partition, and in that task `open`s a reader that yields
Arrow record batches. Only values cross a Ray boundary: streams and partitions must pickle; clients
and connections are created by `open` inside the task.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa


@dataclass(frozen=True)
class Partition:
    """One unit of reading, commit and checkpoint.

    `where` names the slice of the source (a repo, a property, an id range); `window` the cursor
    window (`lo` exclusive, `hi` inclusive, either may be None). `key` is stable across replays of
    the same extraction, so a replay can be recognised and skipped.
    """

    stream: str
    where: tuple[tuple[str, Any], ...] = ()
    window: tuple[Any, Any] = (None, None)

    @property
    def key(self) -> str:
        where = ",".join(f"{k}={v}" for k, v in self.where) or "all"
        lo, hi = self.window
        if lo is None and hi is None:
            return f"{self.stream}/{where}"
        return f"{self.stream}/{where}/({lo},{hi}]"

    @property
    def label(self) -> str:
        """Short text for the Ray dashboard and progress output."""
        return " ".join(f"{k}={v}" for k, v in self.where) or "all"

    def to_json(self) -> dict[str, Any]:
        return {"stream": self.stream, "where": [list(p) for p in self.where], "window": list(self.window)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Partition:
        return cls(
            stream=data["stream"],
            where=tuple((k, v) for k, v in data["where"]),
            window=(data["window"][0], data["window"][1]),
        )


@dataclass(frozen=True)
class PlanContext:
    """What a stream may consult when planning: the stored cursor and how the run was asked for."""

    sync_mode: str
    cursor: Any | None
    """The stream's stored watermark (None when never synced or on full refresh)."""
    run_started_at: datetime
    secrets: dict[str, str] = field(default_factory=dict)
    """Values of the secrets the spec references, for streams that ask the source while planning."""
    options: dict[str, Any] = field(default_factory=dict)
    instance_id: str = ""
    """The connector instance planning (what owns a CDC replication slot)."""


@dataclass(frozen=True)
class Plan:
    """Partitions to read, and the watermark the stream reaches when all of them are committed."""

    partitions: list[Partition]
    cursor_to: Any | None = None
    warnings: tuple[str, ...] = ()
    """What the user should know about this read (a cursor without an index ...): logged on the run."""
    primary_key: tuple[str, ...] = ()
    """The key the source's catalog names, for a stream whose spec declares none (silver merges on it)."""


@dataclass(frozen=True)
class ReadContext:
    """What a reader gets inside its Ray task."""

    run_id: str
    instance_id: str
    secrets: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Reader(Protocol):
    """Reads one partition; lives only inside a Ray task.

    A reader may also offer `notes() -> {kind: {key: value}}`: facts the source gave while reading
    (e.g. `{"etag": {request: etag}}`), recorded in the stream's state once the partition is committed
    and handed to later runs in `ReadContext.options["notes"]`.
    """

    def read(self, partition: Partition) -> Iterator[pa.RecordBatch]: ...


@runtime_checkable
class Stream(Protocol):
    """A stream of one source: picklable, lives on the driver.

    A stream whose reads mostly wait on the network may set `task_cpus` (e.g. 0.5): its read tasks ask
    Ray for that share of a CPU, so more of them run at once.
    """

    @property
    def name(self) -> str: ...

    @property
    def primary_key(self) -> tuple[str, ...]: ...

    @property
    def cursor_field(self) -> str | None: ...

    def schema(self) -> pa.Schema | None: ...

    def plan(self, ctx: PlanContext) -> Plan: ...

    def open(self, ctx: ReadContext) -> Reader: ...
