"""After bronze: what a run asks of the silver and gold layers, one call each.

    silver_target(spec, stream, ...)    once per stream when the run is planned: where its silver table lives
    merge_silver(target, merges, ...)   once per stream whose extraction finished (the run calls it in a Ray task)
    refresh_gold(postgres_url, scope)   once per run, after every merge: the gold views of its tenant and env

The run decides when (and records what was merged in the state ledger); how a merge or an apply works stays in
`layers.silver` and `layers.gold`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import psycopg

from engine.core.errors import ConfigError
from engine.core.spec import ConnectorSpec
from layers.addressing import Address
from layers.bronze.writer import BronzeTarget
from layers.silver.delta import DeltaSilverTable
from layers.silver.merge import merge_extractions
from layers.silver.target import Merge, SilverResult, SilverTarget

if TYPE_CHECKING:
    from layers.gold.apply import GoldResult
    from layers.gold.scope import GoldScope

__all__ = ["Merge", "SilverResult", "SilverTarget", "merge_silver", "refresh_gold", "silver_target"]


def silver_target(
    spec: ConnectorSpec, stream: str, *, address: Address, key: tuple[str, ...], cursor: str | None,
    bronze: BronzeTarget, lakehouse_uri: str,
) -> SilverTarget:
    """Return where `stream`'s silver table lives, merged from `bronze` by `key`.

    Raises ConfigError when the Delta table exists with other partition columns than the spec now asks for:
    it must be rebuilt from bronze first (`ipai silver rebuild`).
    """
    table = address.silver_table(stream)
    lakehouse = spec.destinations.lakehouse.uri or lakehouse_uri
    delta_uri = address.delta_uri(lakehouse, "silver", table) if bronze.delta_uri is not None else None
    options = spec.silver_options(stream)
    if delta_uri:
        problem = DeltaSilverTable(delta_uri, key, options.partition_by).layout_problem()
        if problem:
            raise ConfigError(f"stream {stream}: {problem}; run `ipai silver rebuild {spec.name} "
                              f"--stream {stream}` to lay it out again from bronze (bronze and cursors stay)")
    return SilverTarget(
        table=table, key=key, cursor=cursor, bronze_table=bronze.table,
        delta_uri=delta_uri,
        bronze_delta_uri=bronze.delta_uri,
        quarantine_table=bronze.quarantine_table,
        quarantine_delta_uri=bronze.quarantine_delta_uri if delta_uri else None,
        postgres_url=bronze.postgres_url,
        postgres_schema=spec.destinations.postgres.silver_schema or address.schema("silver"),
        bronze_postgres_schema=bronze.postgres_schema,
        partition_by=options.partition_by,
        flatten=tuple((f.column, f.path, f.type) for f in options.flatten),
    )


def merge_silver(target: SilverTarget, merges: Sequence[Merge], *, run_id: str) -> SilverResult:
    """Merge a stream's finished extractions (oldest first) into its silver table; safe to repeat."""
    return merge_extractions(target, merges, run_id=run_id)


def refresh_gold(postgres_url: str, scope: GoldScope) -> GoldResult:
    """(Re)apply the shipped gold views of one tenant and env (`scope`) to the Postgres destination at
    `postgres_url`.

    A view that cannot be applied is listed in the result, never raised; psycopg.Error (the database is not
    reachable) or ConfigError (it lacks what every view needs) are.
    """
    from layers.gold.apply import apply_gold  # here: the Ray workers that import this module for merges need not

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        return apply_gold(conn, scope=scope)
