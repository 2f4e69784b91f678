"""Joining or starting Ray, and the remote functions the driver schedules."""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import ray

from engine.core.errors import IpaiError
from engine.core.faults import FaultPlan, crash_point
from engine.core.private import private_temp_dir
from engine.core.protocol import Partition, ReadContext, Stream
from engine.core.spec import redact_url
from engine.core.sql import describe_error
from layers.refresh import Merge, SilverResult, SilverTarget, merge_silver as merge_into_silver


def ensure_ray(address: str | None = None, *, dashboard: bool = False) -> None:
    """Connect to the Ray cluster at `address`, or start a local one; reuse a connection already made.

    A local instance lets Ray pick free ports (its GCS would otherwise default to 6379, which Redis
    often holds) and keeps worker logs out of the terminal.
    """
    if ray.is_initialized():
        return
    # Ray warns on every start that token authentication is on; that is the setting we want.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    common: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING,
                              "configure_logging": True}
    if address:
        ray.init(address=address, **common)
        return
    # Ray's default /tmp/ray is shared by every user of the machine; its sockets and session files are ours alone.
    temp_dir = private_temp_dir("ray")
    ray.init(include_dashboard=dashboard, num_cpus=os.cpu_count(), _temp_dir=str(temp_dir), **common)


def cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


@ray.remote(num_returns=2)
def read_partition(
    stream: Stream, partition: Partition, ctx: ReadContext, extraction_id: str, partition_no: int,
    faults: FaultPlan | None,
) -> tuple[pa.Table | None, tuple[int, dict[str, dict[str, str]]]]:
    """Read one partition into an Arrow table stamped with the bronze system columns.

    Return (table, (rows, notes)): the small second value is what the driver waits on; `notes` are the
    reader's facts to record once the partition is committed (see `Reader.notes`).
    """
    reader = stream.open(ctx)
    batches = list(reader.read(partition))
    crash_point(faults, "read.after_fetch")
    notes_of = getattr(reader, "notes", None)
    notes = notes_of() if callable(notes_of) else {}
    if not batches:
        return None, (0, notes)
    table = pa.Table.from_batches(batches)
    n = table.num_rows
    # System columns cost bytes on every row, so they are kept small: the run and extraction ids are
    # dictionary-encoded in flight (4 bytes a row instead of 36), written as text to Delta and as uuid
    # to Postgres; the partition is its number in the extraction's stored plan, not its key.
    first = pa.repeat(pa.scalar(0, pa.int32()), n)
    for name, text in (("_ipai_run_id", ctx.run_id), ("_ipai_extraction_id", extraction_id)):
        column = pa.DictionaryArray.from_arrays(first, pa.array([text], pa.string()))
        table = table.append_column(pa.field(name, column.type), column)
    table = table.append_column(pa.field("_ipai_partition", pa.int32()), pa.repeat(pa.scalar(partition_no, pa.int32()), n))
    now = pa.scalar(datetime.now(timezone.utc), pa.timestamp("us", tz="UTC"))
    table = table.append_column(pa.field("_ipai_extracted_at", now.type), pa.repeat(now, n))
    return table, (n, notes)


class SilverMergeError(IpaiError):
    """A silver merge failed; carries the cause as text (driver exceptions, ADBC's, do not pickle)."""


@ray.remote(max_retries=0)
def merge_silver(target: SilverTarget, merges: list[Merge], run_id: str) -> SilverResult:
    """Merge finished extractions into the stream's silver table (`layers.refresh.merge_silver`)."""
    try:
        return merge_into_silver(target, merges, run_id=run_id)
    except Exception as exc:  # noqa: BLE001 - re-raised as a picklable error naming the table
        raise SilverMergeError(f"{type(exc).__name__}: {describe_error(exc)}") from None


def describe(exc: BaseException) -> str:
    """Return a one-line description of an exception, without a traceback, looking through Ray's task error to
    its cause; URLs have passwords redacted."""
    cause = exc
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.as_instanceof_cause() if hasattr(exc, "as_instanceof_cause") else exc
        inner = getattr(exc, "cause", None)
        if inner is not None:
            cause = inner
    if getattr(cause, "details", None) or getattr(getattr(cause, "diag", None), "message_primary", None):
        # a database driver's error (ADBC, psycopg): the server's own message, not its context lines
        return redact_url(f"{type(cause).__name__}: {describe_error(cause)}")
    text = str(cause).strip().splitlines()
    first = next((line for line in reversed(text) if line.strip()), type(cause).__name__) if text else type(cause).__name__
    return redact_url(f"{type(cause).__name__}: {first}")
