"""`ipai spec`: validate spec files and print the JSON Schema they follow."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from engine.cli.common import err, out, resolve_settings
from engine.core.errors import SpecError
from engine.core.spec import ConnectorSpec

spec_app = typer.Typer(help="Validate specs and print their JSON Schema.", no_args_is_help=True)


@spec_app.command("validate")
def spec_validate(files: Annotated[list[Path], typer.Argument(metavar="FILE...", help="Spec files.")]) -> None:
    """Check spec files; report every error with its line, column and field path."""
    from connectors.specload import load_spec

    failed = 0
    for path in files:
        try:
            spec = load_spec(path)
        except SpecError as exc:
            failed += 1
            err.print(str(exc), highlight=False, markup=False, soft_wrap=True)
            continue
        problem = _table_names(path, spec)
        if problem:
            failed += 1
            err.print(problem, highlight=False, markup=False, soft_wrap=True)
            continue
        out.print(f"{path}: ok ({spec.source_type}, {spec.sync_mode}, "
                  f"{len(spec.streams) or 'all'} stream(s))", highlight=False)
    if failed:
        raise typer.Exit(2)


def _table_names(path: Path, spec: ConnectorSpec) -> str | None:
    """Warn of each table name over PostgreSQL's 63-byte limit (its short form is used); return the error when
    two streams would share a table."""
    from connectors import connector_for
    from layers.addressing import MAX_IDENTIFIER_BYTES, Address

    try:
        streams = [s.name for s in connector_for(spec).streams(spec)]
    except Exception:  # noqa: BLE001 - a connector that cannot list its streams offline: the spec's own list
        streams = [s.name for s in spec.streams]
    address = Address(resolve_settings().tenant, spec.env, spec.name)
    for full, short in address.long_names(streams):
        err.print(f"{path}: note: {full} is {len(full.encode())} bytes, over PostgreSQL's {MAX_IDENTIFIER_BYTES}-byte "
                  f"limit for names; it is written as {short} (the same on every run)",
                  highlight=False, markup=False, soft_wrap=True)
    seen: dict[tuple[str, str], str] = {}
    for stream in streams:
        for place in (("bronze", address.bronze_table(stream)), ("silver", address.silver_table(stream)),
                      ("bronze", address.quarantine_table(stream))):
            if seen.setdefault(place, stream) != stream:
                return (f"{path}: streams {seen[place]} and {stream} would both be written to table {place[1]}: "
                        "shorten the instance name (`name:`) or rename a stream")
    return None


@spec_app.command("schema")
def spec_schema(
    write: Annotated[Path | None, typer.Option("--write", help="Write to this file instead of printing.")] = None,
) -> None:
    """Print the JSON Schema of connector specs (the source of `specs/schema.json`)."""
    from connectors.specload import spec_json_schema_text

    text = spec_json_schema_text()
    if write:
        write.write_text(text, encoding="utf-8")
        out.print(f"wrote {write}")
    else:
        sys.stdout.write(text)
