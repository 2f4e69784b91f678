"""Lakehouse upkeep: compact small files, vacuum files no snapshot needs, checkpoint the log.

A table is upkept in four Delta operations, each its own commit under optimistic concurrency:

    compact (or z-order)  rewrites small files into files near the target size; rows and app-transaction
                          markers (the bronze writer's exactly-once ids) are untouched
    vacuum                deletes data files that left the table longer ago than the retention, and files no
                          commit ever referenced (a crashed writer's) older than the retention
    checkpoint            writes the log's state (files, markers) into one Parquet file
    log cleanup           deletes log entries older than the table's `delta.logRetentionDuration` (30 days)

A writer may append while this runs: appends and compaction commit side by side. A commit that does
conflict (an overwrite or delete meanwhile) is rejected by Delta before it changes anything; the step is
retried once on the latest version, and if it conflicts again the table is reported with the error and
the next table is done. Nothing is lost either way: a rejected commit leaves only unreferenced files,
which a later vacuum removes.

The retention is never below the table's own safety check (`delta.deletedFileRetentionDuration`, 7 days
by default) unless the caller asks with both an explicit retention and `force`: see `short_retention_warning`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from engine.core.errors import ConfigError, IpaiError, NotFound
from layers.addressing import parse_schema
from layers.delta import table_uri

Layer = Literal["bronze", "silver", "gold"]
LAYERS: tuple[Layer, ...] = ("bronze", "silver", "gold")
DEFAULT_RETENTION_HOURS = 168
"""Delta's default `delta.deletedFileRetentionDuration`: 7 days."""
DEFAULT_TARGET_SIZE = 100 * 1024 * 1024
"""Delta's default `delta.targetFileSize`."""

T = TypeVar("T")


@dataclass(frozen=True)
class TableRef:
    """One Delta table of the lakehouse: its layer and name, or only its URI when given by path."""

    uri: str
    layer: str | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        return f"{self.layer}/{self.name}" if self.layer and self.name else self.uri


@dataclass(frozen=True)
class TableStats:
    """What a snapshot of a table holds, from its log alone (no data file is read)."""

    version: int
    files: int
    bytes: int
    rows: int | None
    """None when some file carries no row-count statistics."""


@dataclass(frozen=True)
class UpkeepOptions:
    """What `plan_upkeep` is asked to do."""

    retention_hours: int | None = None
    """Vacuum retention; None: the table's own (`delta.deletedFileRetentionDuration`), at least 7 days."""
    force: bool = False
    """Allow a `retention_hours` below the table's own safety check (see `short_retention_warning`)."""
    dry_run: bool = False
    """Report what would be compacted and vacuumed; commit nothing, delete nothing."""
    target_size: int | None = None
    """Bytes per compacted file; None: the table's `delta.targetFileSize`, else 100 MiB."""
    zorder_by: tuple[str, ...] = ()
    """Z-order on these columns instead of a plain compaction (rewrites every file, each time)."""


@dataclass(frozen=True)
class TablePlan:
    """The upkeep of one table as planned from one version of it."""

    ref: TableRef
    version: int
    before: TableStats
    retention_hours: int
    min_retention_hours: float
    target_size: int
    small_files: int
    """Files smaller than `target_size`: what compaction would rewrite."""
    zorder_by: tuple[str, ...] = ()
    dry_run: bool = False
    warnings: tuple[str, ...] = ()

    @property
    def below_safety_check(self) -> bool:
        return self.retention_hours < self.min_retention_hours


@dataclass(frozen=True)
class TableReport:
    """What upkeep did to one table (or, in a dry run, would do)."""

    ref: TableRef
    before: TableStats
    after: TableStats
    compacted_files: int = 0
    """Files rewritten by compaction (in a dry run: files smaller than the target size)."""
    vacuumed_files: int = 0
    """Files deleted by vacuum (in a dry run: files it would delete)."""
    checkpoint_version: int | None = None
    retries: int = 0
    """Steps retried after a concurrent commit conflicted."""
    error: str | None = None
    dry_run: bool = False
    notes: tuple[str, ...] = field(default=())


# -- finding tables -------------------------------------------------------------------------------------


def list_tables(lakehouse_uri: str, *, layer: str | None = None, tenant: str | None = None) -> list[TableRef]:
    """Return the Delta tables of `layer` (or of every layer) of the lakehouse, of `tenant`'s folders only when
    given (layers/addressing.py), sorted by layer, folder and name."""
    fs, root = _filesystem(lakehouse_uri)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise NotFound(f"no lakehouse at {lakehouse_uri}: pass --lakehouse (or set IPAI_LAKEHOUSE_URI), "
                       "or run a sync first")
    found = []
    folders = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(root))
                     if i.type == pafs.FileType.Directory)
    for name in folders:  # bronze, bronze_dev, acme_silver ...: one folder per layer of each tenant and env
        parsed = parse_schema(name)
        if parsed is None or (layer and parsed[1] != layer) or (tenant and parsed[0] != tenant):
            continue
        for info in fs.get_file_info(pafs.FileSelector(f"{root}/{name}")):
            if info.type == pafs.FileType.Directory and _is_delta(fs, info.path):
                found.append(TableRef(uri=table_uri(lakehouse_uri, name, info.base_name), layer=name,
                                      name=info.base_name))
    return sorted(found, key=lambda r: (_layer_order(r.layer), r.layer or "", r.name or ""))


def _layer_order(folder: str | None) -> int:
    parsed = parse_schema(folder) if folder else None
    return LAYERS.index(parsed[1]) if parsed else 99


def find_tables(lakehouse_uri: str, table: str | None = None, *, layer: str | None = None,
                tenant: str | None = None) -> list[TableRef]:
    """Return the tables upkeep or export should act on: `table` (a name, or a path to a Delta table), else
    every table of `layer`, else every table of the lakehouse; only `tenant`'s, when given (a path into another
    tenant's folder raises ConfigError). An unknown name raises `NotFound` naming the tables that exist."""
    if table and ("/" in table or "\\" in table):
        if not DeltaTable.is_deltatable(table):
            raise NotFound(f"{table} is not a Delta table (no _delta_log folder); pass a table name or its folder")
        owner = parse_schema(Path(table.rstrip("/\\")).parent.name)
        if tenant and owner and owner[0] != tenant:
            raise ConfigError(f"{table} belongs to tenant {owner[0]}, not {tenant} (IPAI_TENANT): act on it as "
                              "that tenant")
        return [TableRef(uri=table)]
    tables = list_tables(lakehouse_uri, layer=layer, tenant=tenant)
    if table is None:
        return tables
    matches = [t for t in tables if t.name == table]
    if len(matches) > 1:
        raise ConfigError(f"table {table!r} is in several folders ({', '.join(str(t.layer) for t in matches)}: "
                          "instances of other tenants or envs); pass the one you mean as its path, e.g. "
                          f"{matches[0].uri}")
    if not matches:
        where = f"layer {layer}" if layer else "the lakehouse"
        known = ", ".join(t.label for t in tables) or "none yet"
        elsewhere = [t.label for t in list_tables(lakehouse_uri) if t.name == table] if layer else []
        hint = f" ({table} is in {', '.join(elsewhere)}: drop --layer or change it)" if elsewhere else ""
        raise NotFound(f"no table {table!r} in {where} at {lakehouse_uri}{hint}; tables there: {known}")
    return matches


def table_stats(table: DeltaTable) -> TableStats:
    """Return the version, file count, bytes and rows of the snapshot `table` holds."""
    actions = pa.table(table.get_add_actions())
    sizes = actions.column("size_bytes").to_pylist() if actions.num_rows else []
    counts = actions.column("num_records").to_pylist() if "num_records" in actions.column_names else [None]
    rows = None if any(c is None for c in counts) and actions.num_rows else sum(c or 0 for c in counts)
    return TableStats(version=table.version(), files=actions.num_rows, bytes=sum(sizes), rows=rows)


# -- planning -------------------------------------------------------------------------------------------


def plan_upkeep(refs: Sequence[TableRef], options: UpkeepOptions = UpkeepOptions()) -> list[TablePlan]:
    """Plan the upkeep of `refs` from their current versions. A retention below a table's safety check is
    refused (`ConfigError`) unless `options.force`; then each such plan carries the warning to show."""
    plans = []
    for ref in refs:
        table = _open(ref)
        config = table.metadata().configuration
        configured = parse_interval_hours(config.get("delta.deletedFileRetentionDuration"))
        min_hours = DEFAULT_RETENTION_HOURS if configured is None else configured
        retention = (options.retention_hours if options.retention_hours is not None
                     else max(DEFAULT_RETENTION_HOURS, math.ceil(min_hours)))
        if retention < 0:
            raise ConfigError(f"--retention-hours {retention}: a retention is a number of hours, 0 or more")
        target = options.target_size or _int(config.get("delta.targetFileSize")) or DEFAULT_TARGET_SIZE
        sizes = pa.table(table.get_add_actions()).column("size_bytes").to_pylist()
        plan = TablePlan(ref=ref, version=table.version(), before=table_stats(table), retention_hours=retention,
                         min_retention_hours=min_hours, target_size=target,
                         small_files=sum(1 for size in sizes if size < target), zorder_by=tuple(options.zorder_by),
                         dry_run=options.dry_run, warnings=_config_warnings(config))
        if plan.below_safety_check:
            if not (options.force and options.retention_hours is not None):
                raise ConfigError(f"{ref.label}: refusing to vacuum with a retention of {retention} h, below the "
                                  f"table's safety check of {min_hours:g} h. "
                                  + short_retention_warning(retention, min_hours)
                                  + " Keep the default, or pass --retention-hours with --force if no reader or "
                                  "writer uses the table now and you give up time travel.")
            plan = replace(plan, warnings=(*plan.warnings, short_retention_warning(retention, min_hours)))
        plans.append(plan)
    return plans


def short_retention_warning(hours: float, min_hours: float) -> str:
    """Explain what a vacuum retention of `hours`, below the table's `min_hours`, breaks."""
    return (f"A retention of {hours:g} h deletes data files that left the table as recently as {hours:g} h ago "
            f"(the table keeps them {min_hours:g} h): a reader still on an older version (a running query, a Postgres load, an "
            f"export) fails on missing files; time travel back more than {hours:g} h stops working; "
            "and a writer committing right now may have its freshly written, not yet committed files deleted "
            "under it, so its commit points at files that do not exist.")


def parse_interval_hours(value: str | None) -> float | None:
    """Return the hours of a Delta interval setting (`interval 7 days`), or None when unset or unreadable."""
    match = re.fullmatch(r"\s*(?:interval\s+)?(\d+(?:\.\d+)?)\s*([a-z]+?)s?\s*", (value or "").lower())
    if not match:
        return None
    per_hour = {"nanosecond": 3.6e12, "microsecond": 3.6e9, "millisecond": 3.6e6, "second": 3600.0,
                "minute": 60.0, "hour": 1.0, "day": 1 / 24, "week": 1 / 168}
    unit = per_hour.get(match.group(2))
    return float(match.group(1)) / unit if unit else None


def _config_warnings(config: dict[str, str]) -> tuple[str, ...]:
    if config.get("delta.setTransactionRetentionDuration"):
        return (f"delta.setTransactionRetentionDuration is {config['delta.setTransactionRetentionDuration']}: "
                "checkpoints drop exactly-once markers older than that, so a partition replayed later than "
                "that would be written twice; unset it on bronze tables",)
    return ()


# -- running --------------------------------------------------------------------------------------------


def run_upkeep(plans: Sequence[TablePlan]) -> Iterator[TableReport]:
    """Upkeep each planned table in turn, yielding its report; a failure is reported for its table (in
    `error`) and the next table is done."""
    for plan in plans:
        yield _upkeep(plan)


def optimize(refs: Sequence[TableRef], options: UpkeepOptions = UpkeepOptions()) -> list[TableReport]:
    """Plan and run the upkeep of `refs`: compaction, vacuum, checkpoint and log cleanup."""
    return list(run_upkeep(plan_upkeep(refs, options)))


def _upkeep(plan: TablePlan) -> TableReport:
    ref = plan.ref
    report = TableReport(ref=ref, before=plan.before, after=plan.before, dry_run=plan.dry_run, notes=plan.warnings)
    step = "loading"
    try:
        table = DeltaTable(ref.uri, version=plan.version)
        if plan.dry_run:
            step = "vacuum (dry run)"
            return replace(report, compacted_files=plan.small_files,
                           vacuumed_files=len(_vacuum(table, plan, dry_run=True)))
        step = "compaction"
        metrics, retried = _retry_once(ref, table, lambda t: _compact(t, plan))
        report = replace(report, compacted_files=int(metrics.get("numFilesRemoved", 0)), retries=retried)
        # Always the latest version from here on: vacuuming a stale snapshot would treat files committed
        # since as unreferenced.
        step = "vacuum"
        removed, retried = _retry_once(ref, _open(ref), lambda t: _vacuum(t, plan, dry_run=False))
        report = replace(report, vacuumed_files=len(removed), retries=report.retries + retried)
        step = "checkpoint"
        latest = _open(ref)
        latest.create_checkpoint()
        latest.cleanup_metadata()
        report = replace(report, checkpoint_version=latest.version())
        step = "reading the result"
        return replace(report, after=table_stats(_open(ref)))
    except CommitFailedError as exc:
        error = (f"{step} conflicted with a concurrent commit, also when retried on the latest version "
                 f"({_first_line(exc)}); nothing was changed by it: run upkeep again")
    except (DeltaError, OSError, IpaiError) as exc:
        error = f"{step} failed: {_first_line(exc)}"
    try:
        after = table_stats(_open(ref))
    except (DeltaError, OSError, IpaiError):
        after = report.after
    return replace(report, after=after, error=error)


def _compact(table: DeltaTable, plan: TablePlan) -> dict[str, Any]:
    if plan.zorder_by:
        return table.optimize.z_order(plan.zorder_by, target_size=plan.target_size)
    return table.optimize.compact(target_size=plan.target_size)


def _vacuum(table: DeltaTable, plan: TablePlan, *, dry_run: bool) -> list[str]:
    # full=True also lists files no commit references (a writer that crashed before committing); those too
    # are kept until older than the retention, so a writer mid-commit keeps its files.
    return table.vacuum(retention_hours=plan.retention_hours, dry_run=dry_run, full=True,
                        enforce_retention_duration=not plan.below_safety_check)


def _retry_once(ref: TableRef, table: DeltaTable, step: Callable[[DeltaTable], T]) -> tuple[T, int]:
    """Run `step` on `table`; if a concurrent commit conflicts, once more on the latest version."""
    try:
        return step(table), 0
    except CommitFailedError:
        return step(_open(ref)), 1


def _open(ref: TableRef) -> DeltaTable:
    try:
        return DeltaTable(ref.uri)
    except TableNotFoundError:
        raise NotFound(f"{ref.label}: no Delta table at {ref.uri} (was it dropped?)") from None
    except DeltaError as exc:
        raise IpaiError(f"{ref.label}: cannot read the Delta log at {ref.uri}: {_first_line(exc)}") from None


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in uri:
        uri = str(Path(uri).expanduser().resolve())
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(f"lakehouse {uri}: cannot open it ({_first_line(exc)})") from None
    return fs, path.rstrip("/")


def _is_delta(fs: pafs.FileSystem, path: str) -> bool:
    return bool(fs.get_file_info(f"{path}/_delta_log").type == pafs.FileType.Directory)


def _int(value: str | None) -> int | None:
    return int(value) if value and value.strip().isdigit() else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
