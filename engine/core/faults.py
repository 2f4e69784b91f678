"""Crash points for reliability tests: kill the current process at a named step, once.

A run carries a `FaultPlan` only when a test asks for one; in normal runs it is None and every
`crash_point` call returns at once. The marker file makes each point fire once, so the process that
replaces the killed one (a Ray retry or restart) gets past it.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

POINTS = (
    "read.after_fetch",          # inside a read task, after the source was read, before returning
    "writer.before_commit",      # in the writer, before anything is committed
    "writer.after_delta",        # Delta committed, Postgres not yet
    "writer.after_postgres",     # both committed, the driver not yet told
    "driver.before_checkpoint",  # the driver has the ack, the state ledger not yet written
    "driver.after_checkpoint",   # the ledger written, the stream cursor not yet advanced
)


@dataclass(frozen=True)
class FaultPlan:
    """Which crash points fire, and where their fire-once markers live."""

    points: tuple[str, ...]
    marker_dir: str

    def __post_init__(self) -> None:
        unknown = sorted(set(self.points) - set(POINTS))
        if unknown:
            raise ValueError(f"unknown crash point {', '.join(unknown)}; known: {', '.join(POINTS)}")


class DriverCrash(BaseException):
    """Raised at a driver crash point: stands for the driver process dying (nothing below catches it)."""


def crash_point(plan: FaultPlan | None, point: str, *, in_driver: bool = False) -> None:
    """Kill this process (or, in the driver, raise DriverCrash) the first time `point` is reached."""
    if plan is None or point not in plan.points:
        return
    marker = Path(plan.marker_dir) / point
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    if in_driver:
        raise DriverCrash(point)
    os.kill(os.getpid(), signal.SIGKILL)
