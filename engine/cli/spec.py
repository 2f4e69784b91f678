"""`ipai spec`: validate spec files and print the JSON Schema they follow."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from engine.cli.common import err, out
from engine.core.errors import SpecError

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
        out.print(f"{path}: ok ({spec.source_type}, {spec.sync_mode}, "
                  f"{len(spec.streams) or 'all'} stream(s))", highlight=False)
    if failed:
        raise typer.Exit(2)


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
