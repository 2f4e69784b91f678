"""Progress of one run: the counts a display shows (`Progress`), the counters kept on the run row (metrics), and
the heartbeat that saves them at most once a second, renewing the run's lease (`RunProgress`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.controlplane import records
from engine.run.context import RunContext

HEARTBEAT_S = 1.0


@dataclass
class Progress:
    """A snapshot of a run for progress displays."""

    run_id: str
    partitions_total: int = 0
    partitions_done: int = 0
    rows: int = 0
    rows_by_stream: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    @property
    def rows_per_second(self) -> float:
        return self.rows / max(1e-6, time.monotonic() - self.started)


class RunProgress:
    """Keeps a run's progress and metrics, saves them on the run row and shows them to `on_progress`."""

    def __init__(self, ctx: RunContext, on_progress: Callable[[Progress], None] | None) -> None:
        self.ctx = ctx
        self.on_progress = on_progress
        self.progress = Progress(ctx.run_id)
        self.metrics: dict[str, dict[str, int]] = {}  # stream -> counters kept on the run row (connector_runs.metrics)
        self.last_beat = 0.0

    def planned(self, stream: str, *, partitions: int, done: int) -> None:
        """Count a planned stream: `partitions` in its extraction, `done` of them committed by earlier runs."""
        self.progress.partitions_total += partitions
        self.progress.partitions_done += done
        self.progress.rows_by_stream[stream] = 0

    def committed(self, stream: str, *, partitions: int, rows: int) -> None:
        """Count partitions just checkpointed."""
        self.progress.partitions_done += partitions
        self.progress.rows += rows
        self.progress.rows_by_stream[stream] += rows

    def count(self, stream: str, **counts: int) -> None:
        """Add to the stream's counters on the run row (`bronze_quarantined`, `silver_rows`, ...)."""
        kept = self.metrics.setdefault(stream, {})
        for name, n in counts.items():
            kept[name] = kept.get(name, 0) + n

    def show(self) -> None:
        """Hand the current snapshot to the caller's progress display, if any."""
        if self.on_progress:
            self.on_progress(self.progress)

    def save(self) -> None:
        """Persist progress and renew the lease (raises LeaseLost if the run was taken from us)."""
        p = self.progress
        records.update_progress(self.ctx.conn, self.ctx.run_id, rows=p.rows, partitions_done=p.partitions_done,
                                partitions_total=p.partitions_total, rows_by_stream=p.rows_by_stream,
                                lease_seconds=self.ctx.options.lease_seconds)

    def beat(self) -> None:
        """Save and show progress, unless that was done less than HEARTBEAT_S ago."""
        now = time.monotonic()
        if now - self.last_beat < HEARTBEAT_S:
            return
        self.last_beat = now
        self.save()
        self.show()
