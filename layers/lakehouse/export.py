"""Parquet export of a Delta table, for consumers that cannot read Delta.

The export is a folder of plain Parquet files (Hive-partitioned when asked), our own marker
`_IPAI_EXPORT.json`, and a `_SUCCESS` file, written last; both record the table and the Delta version exported.
It is built in a hidden folder beside the destination and renamed into place, so a consumer that waits for
`_SUCCESS` never reads a half-written export; a re-export replaces the previous one with two renames (for an
instant between them the folder is absent, never partial).

Only `_IPAI_EXPORT.json` lets a re-export replace a folder: Spark and Hadoop write `_SUCCESS` too, and a folder
of theirs must never be deleted because it looks like ours. The destination is a local folder; a URI with
another scheme is refused, never turned into a folder named after it (`s3://b/x` is not `./s3:/b/x`).

Rows are streamed batch by batch: memory is bounded by a few batches and the open files' row groups, not by
the table.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, TableNotFoundError

from engine.core.errors import ConfigError, IpaiError, NotFound

SUCCESS = "_SUCCESS"
MARKER = "_IPAI_EXPORT.json"
"""What makes a folder ours to replace; `_SUCCESS` alone does not (Spark and Hadoop write it too)."""
BATCH_ROWS = 64 * 1024
ROWS_PER_FILE = 1_000_000


@dataclass(frozen=True)
class ExportResult:
    """Where an export landed and what it holds."""

    dest: Path
    version: int
    rows: int
    files: int
    bytes: int


def export_parquet(table_uri: str, dest_dir: str | Path, *, version: int | None = None,
                   partition_by: list[str] | None = None,
                   storage_options: dict[str, str] | None = None) -> ExportResult:
    """Export the table at `table_uri` (at `version`, else the latest) as Parquet files into `dest_dir`, a
    local folder that is created, or replaced when it holds a previous export (its `_IPAI_EXPORT.json`)."""
    dest = _destination(table_uri, dest_dir)
    table = _open(table_uri, version, storage_options)
    dataset = table.to_pyarrow_dataset()
    missing = [c for c in partition_by or [] if c not in dataset.schema.names]
    if missing:
        raise ConfigError(f"cannot partition the export of {table_uri} by {', '.join(missing)}: no such column; "
                          f"columns: {', '.join(dataset.schema.names)}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.export-{uuid.uuid4().hex[:8]}"
    try:
        rows, written = _write(dataset, staging, partition_by or [], table_uri=table_uri, version=table.version())
        marker = {"table": table_uri, "version": table.version(), "rows": rows, "partition_by": partition_by or [],
                  "files": sorted(str(Path(p).relative_to(staging)) for p in written),
                  "exported_at": datetime.now(UTC).isoformat(timespec="seconds")}
        _write_marker(staging / MARKER, marker)
        _write_marker(staging / SUCCESS, marker)
        _swap_into_place(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(dest=dest, version=table.version(), rows=rows, files=len(written),
                        bytes=sum(written.values()))


def read_marker(dest_dir: str | Path) -> dict[str, Any] | None:
    """Return the record of a finished export in `dest_dir` (its `_IPAI_EXPORT.json`), or None when there is none."""
    path = Path(dest_dir) / MARKER
    if not path.is_file():
        return None
    record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return record


def _write(dataset: ds.Dataset, staging: Path, partition_by: list[str], *, table_uri: str,
           version: int) -> tuple[int, dict[str, int]]:
    """Stream `dataset` into Parquet files under `staging`; return the rows and each file's size."""
    scanner = dataset.scanner(batch_size=BATCH_ROWS, batch_readahead=2, fragment_readahead=1)
    reader = scanner.to_reader()
    rows = 0

    def counted() -> Any:
        nonlocal rows
        for batch in reader:
            rows += batch.num_rows
            yield batch

    written: dict[str, int] = {}
    try:
        ds.write_dataset(counted(), staging, schema=reader.schema, format="parquet",
                         partitioning=partition_by or None, partitioning_flavor="hive" if partition_by else None,
                         basename_template="part-{i}.parquet", max_rows_per_file=ROWS_PER_FILE,
                         max_rows_per_group=128 * 1024, max_open_files=256, max_partitions=100_000,
                         existing_data_behavior="error",
                         file_visitor=lambda f: written.__setitem__(f.path, f.size))
    except FileNotFoundError as exc:
        # A data file of this version was vacuumed: the log still lists it, the folder no longer has it.
        raise NotFound(f"version {version} of {table_uri} refers to data files that vacuum has removed "
                       f"({exc.filename or str(exc).splitlines()[0]}); export a newer version") from None
    return rows, written


def _write_marker(path: Path, record: dict[str, Any]) -> None:
    partial = path.with_name(f"{path.name}.partial")
    with open(partial, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


def _swap_into_place(staging: Path, dest: Path) -> None:
    if not dest.exists():
        os.rename(staging, dest)
        return
    retired = dest.parent / f".{dest.name}.retired-{uuid.uuid4().hex[:8]}"
    os.rename(dest, retired)
    try:
        os.rename(staging, dest)
    except OSError:
        os.rename(retired, dest)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def local_destination(dest_dir: str | Path) -> Path:
    """The local folder `dest_dir` names (a path or a `file://` URI); any other URI is refused.

    Takes the text as given: a `Path` would fold `s3://b/x` into the relative folder `s3:/b/x`."""
    text = str(dest_dir)
    scheme = _scheme(text)
    if scheme and scheme != "file":
        raise ConfigError(f"export destination {text}: exports go to a local folder (they are swapped into place "
                          f"with a rename); export to object storage ({scheme}://) is not supported yet (a later "
                          "issue): export to a local folder and copy it there afterwards")
    return Path(text.removeprefix("file://")).expanduser().resolve()


def _scheme(text: str) -> str | None:
    """The URI scheme of `text` (`s3`, `abfss`, `file`), or None for a plain path (`C:` is not a scheme)."""
    head, sep, _ = text.partition(":")
    if not sep or len(head) < 2 or not head[0].isalpha():
        return None
    if not all(c.isalnum() or c in "+-." for c in head):
        return None
    return head.lower()


def _destination(table_uri: str, dest_dir: str | Path) -> Path:
    dest = local_destination(dest_dir)
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"export destination {dest} is a file; choose a folder")
    if dest.is_dir() and any(dest.iterdir()) and not (dest / MARKER).is_file():
        found = (" (a _SUCCESS alone is not ours: Spark and Hadoop write one too; an export by an older ipai has "
                 "no marker either: remove it yourself)") if (dest / SUCCESS).exists() else ""
        raise ConfigError(f"export destination {dest} is not empty and holds no previous export of ours "
                          f"({MARKER}){found}; nothing was changed: choose a new or empty folder, since a re-export "
                          "replaces the whole folder")
    if "://" not in table_uri or table_uri.startswith("file://"):
        source = Path(table_uri.removeprefix("file://")).expanduser().resolve()
        if dest.is_relative_to(source) or source.is_relative_to(dest):
            raise ConfigError(f"export destination {dest} overlaps the table at {source}; choose a folder outside it")
    return dest


def _open(table_uri: str, version: int | None, storage_options: dict[str, str] | None) -> DeltaTable:
    try:
        latest = DeltaTable(table_uri, storage_options=storage_options)
    except TableNotFoundError:
        raise NotFound(f"no Delta table at {table_uri}") from None
    if version is None or version == latest.version():
        return latest
    if not 0 <= version <= latest.version():
        raise NotFound(f"{table_uri} has no version {version}; its latest is {latest.version()}")
    try:
        return DeltaTable(table_uri, version=version, storage_options=storage_options)
    except DeltaError as exc:
        raise IpaiError(f"cannot load version {version} of {table_uri}: its log was cleaned up or is unreadable "
                        f"({str(exc).strip().splitlines()[0]}); export a newer version") from None
