"""`ipai lakehouse`: list the lakehouse's Delta tables, keep them compact and vacuumed, export them as Parquet.

Errors print one message naming the table or folder and what to do, and exit nonzero (1; 2 for refused
arguments) without a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from deltalake.exceptions import DeltaError
from rich.markup import escape
from rich.table import Table

from engine.cli.common import LakehouseOpt, err, out, resolve_settings
from engine.core.errors import ConfigError, IpaiError
from layers.lakehouse.upkeep import Layer, TableReport, TableStats, UpkeepOptions

lakehouse_app = typer.Typer(help="The Delta lakehouse: list tables, compact and vacuum them, export Parquet.",
                            no_args_is_help=True)

TableArg = Annotated[str, typer.Argument(metavar="TABLE", help="Table name (e.g. raw_shop_orders) or a "
                                         "Delta table's folder.")]
LayerOpt = Annotated[Layer | None, typer.Option("--layer", help="Only this layer (default: every layer; a "
                     "table name found in one layer needs no --layer).", show_default=False)]


@contextmanager
def _reported() -> Iterator[None]:
    """Turn an engine error into one message on stderr and a nonzero exit, never a traceback."""
    try:
        yield
    except IpaiError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2 if isinstance(exc, ConfigError) else 1) from None
    except (DeltaError, OSError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))}",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


@lakehouse_app.command("tables")
def tables(layer: LayerOpt = None, lakehouse: LakehouseOpt = None) -> None:
    """List the Delta tables with their version, files, size and rows (from the log; no data is read)."""
    from deltalake import DeltaTable

    from layers.lakehouse.upkeep import list_tables, table_stats

    settings = resolve_settings(lakehouse=lakehouse)
    with _reported():
        refs = list_tables(settings.lakehouse_uri, layer=layer, tenant=settings.tenant)
        stats = [table_stats(DeltaTable(ref.uri)) for ref in refs]
    if not refs:
        out.print(f"no Delta tables in {settings.lakehouse_uri}" + (f"/{layer}" if layer else "")
                  + ": a sync writes bronze tables there", highlight=False, soft_wrap=True)
        return
    grid = Table(title=f"lakehouse {settings.lakehouse_uri}", title_justify="left")
    for col in ("layer", "table", "version", "files", "size", "rows"):
        grid.add_column(col, justify="left" if col in ("layer", "table") else "right", overflow="fold")
    for ref, s in zip(refs, stats, strict=True):
        grid.add_row(ref.layer, ref.name, str(s.version), f"{s.files:,}", _size(s.bytes),
                     f"{s.rows:,}" if s.rows is not None else "-")
    out.print(grid)


@lakehouse_app.command("optimize")
def optimize(
    table: Annotated[str | None, typer.Argument(metavar="TABLE", help="One table (name or folder); "
                     "default: every table of --layer, else of the lakehouse.", show_default=False)] = None,
    layer: LayerOpt = None,
    lakehouse: LakehouseOpt = None,
    retention_hours: Annotated[int | None, typer.Option("--retention-hours", help="Vacuum files removed from "
                               "the table longer ago than this (default: the table's own retention, at least "
                               "168 h = 7 days). Below the table's safety check only with --force.",
                               show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Allow --retention-hours below the table's safety "
                     "check: breaks readers on older versions, time travel, and writers committing now.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be compacted and vacuumed; "
                       "change nothing.")] = False,
    target_size_mb: Annotated[int | None, typer.Option("--target-size-mb", help="Size of compacted files "
                              "(default: the table's delta.targetFileSize, else 100 MiB).",
                              show_default=False)] = None,
    zorder: Annotated[list[str] | None, typer.Option("--zorder", help="Z-order by this column (repeatable) "
                      "instead of a plain compaction; rewrites every file each time.", show_default=False)] = None,
) -> None:
    """Compact small files, vacuum old ones and checkpoint the log, of TABLE or every table.

    Writers may keep appending meanwhile. Vacuum keeps every file a version within the retention needs."""
    from layers.lakehouse.upkeep import find_tables, plan_upkeep, run_upkeep

    settings = resolve_settings(lakehouse=lakehouse)
    options = UpkeepOptions(retention_hours=retention_hours, force=force, dry_run=dry_run,
                            target_size=target_size_mb * 1024 * 1024 if target_size_mb else None,
                            zorder_by=tuple(zorder or ()))
    with _reported():
        plans = plan_upkeep(find_tables(settings.lakehouse_uri, table, layer=layer, tenant=settings.tenant), options)
        if not plans:
            out.print(f"no Delta tables in {settings.lakehouse_uri}" + (f"/{layer}" if layer else ""),
                      highlight=False, soft_wrap=True)
            return
        shown = set()
        for plan in plans:
            for warning in plan.warnings:
                if warning not in shown:
                    shown.add(warning)
                    err.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)
        reports = []
        for plan in plans:
            if not dry_run:
                err.print(f"[dim]{escape(plan.ref.label)}: compacting, vacuuming, checkpointing ...[/dim]",
                          highlight=False)
            reports.append(next(run_upkeep([plan])))
    out.print(_report_table(reports, dry_run=dry_run))
    failed = [r for r in reports if r.error]
    for r in failed:
        err.print(f"[red]error:[/red] {escape(r.ref.label)}: {escape(r.error or '')}", highlight=False,
                  soft_wrap=True)
    if failed:
        raise typer.Exit(1)


@lakehouse_app.command("export")
def export(
    table: TableArg,
    to: Annotated[str, typer.Option("--to", help="Local folder for the Parquet files; created, or replaced "
                  "when it holds a previous export (its _IPAI_EXPORT.json). Object storage URIs are refused "
                  "for now.", show_default=False)],
    layer: LayerOpt = None,
    version: Annotated[int | None, typer.Option("--version", help="Delta version to export (default: the "
                       "latest).", show_default=False)] = None,
    partition_by: Annotated[list[str] | None, typer.Option("--partition-by", help="Hive-partition the files "
                            "by this column (repeatable).", show_default=False)] = None,
    lakehouse: LakehouseOpt = None,
) -> None:
    """Export TABLE as plain Parquet files, with a `_SUCCESS` file naming the Delta version written last."""
    from layers.lakehouse.export import export_parquet, local_destination
    from layers.lakehouse.upkeep import find_tables

    settings = resolve_settings(lakehouse=lakehouse)
    with _reported():
        [ref] = find_tables(settings.lakehouse_uri, table, layer=layer, tenant=settings.tenant)
        dest = local_destination(to)  # `--to` stays text: a Path would turn s3://b/x into the folder s3:/b/x
        _outside_lakehouse(dest, settings.lakehouse_uri)
        result = export_parquet(ref.uri, dest, version=version, partition_by=partition_by)
    out.print(f"exported {ref.label} version {result.version}: {result.rows:,} rows in {result.files} Parquet "
              f"files ({_size(result.bytes)}) to {result.dest}", highlight=False, soft_wrap=True)


def _outside_lakehouse(to: Path, lakehouse_uri: str) -> None:
    """Refuse an export into the lakehouse, where it could replace a table (any instance's)."""
    if "://" in lakehouse_uri and not lakehouse_uri.startswith("file://"):
        return
    root = Path(lakehouse_uri.removeprefix("file://")).expanduser().resolve()
    if to.expanduser().resolve().is_relative_to(root):
        raise ConfigError(f"--to {to} is inside the lakehouse ({root}), where the instances' tables live: "
                          "export to a folder outside it")


def _report_table(reports: list[TableReport], *, dry_run: bool) -> Table:
    title = "dry run: nothing changed" if dry_run else "lakehouse upkeep"
    grid = Table(title=title, title_justify="left")
    headers = ("table", "version", "files", "size", "compacted" if not dry_run else "small files",
               "vacuumed" if not dry_run else "to vacuum", "rows", "status")
    for col in headers:
        grid.add_column(col, justify="left" if col in ("table", "status") else "right", overflow="fold")
    for r in reports:
        grid.add_row(r.ref.label, _arrow(r.before.version, r.after.version), _arrow(r.before.files, r.after.files),
                     _arrow(_size(r.before.bytes), _size(r.after.bytes)), f"{r.compacted_files:,}",
                     f"{r.vacuumed_files:,}", _rows(r.before, r.after), _status(r))
    return grid


def _status(r: TableReport) -> str:
    if r.error:
        return "[red]failed[/red]"
    status = "planned" if r.dry_run else f"ok, checkpoint {r.checkpoint_version}"
    return status + (f" ({r.retries} retried after a conflict)" if r.retries else "")


def _arrow(before: object, after: object) -> str:
    return f"{before}" if before == after else f"{before} -> {after}"


def _rows(before: TableStats, after: TableStats) -> str:
    if before.rows is None or after.rows is None:
        return "-"
    return _arrow(f"{before.rows:,}", f"{after.rows:,}")


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n} B"
