"""What the connector conformance suite (tests/conformance) checks of bronze, for any connector.

    Versions            {key: version} of one stream: what the source holds now, or the newest row bronze holds
    latest_versions     the newest version of every key in a bronze table
    assert_bronze_holds one bronze table against the source's truth: every key, its newest version, once
    BronzeState         everything a write can change in an instance's bronze, to compare before and after
    reopen_extractions  make the next run of an instance execute its finished extractions again

A stream's *version* columns are those that change when the source changes a record (`updated_at`, a
status, a metric): the truth and bronze are compared on the key and on them, the same way for every
connector, so a connector's case only says which columns they are.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable

from engine.controlplane.db import Database
from engine.core.spec import ConnectorSpec
from tests.support.truth import (
    address, assert_exactly_once_per_extraction, bronze_delta, bronze_postgres, bronze_schema, bronze_table, bronze_uri,
)

Key = tuple[Any, ...]
Versions = dict[Key, tuple[Any, ...]]


def versions(rows: pa.Table, key: tuple[str, ...], version: tuple[str, ...]) -> Versions:
    """{key: version} of every row of `rows`, which must hold each key once (a source's truth)."""
    columns = [rows.column(c).to_pylist() for c in (*key, *version)]
    out = {tuple(row[:len(key)]): tuple(row[len(key):]) for row in zip(*columns)}
    assert len(out) == rows.num_rows, "the truth holds a key twice"
    return out


def latest_versions(table: pa.Table, key: tuple[str, ...], version: tuple[str, ...]) -> Versions:
    """The newest version of every key in a bronze table: the one read last (`_ipai_extracted_at`)."""
    keys = [table.column(c).to_pylist() for c in key]
    values = [table.column(c).to_pylist() for c in version]
    newest: dict[Key, tuple[Any, tuple[Any, ...]]] = {}
    for i, at in enumerate(table.column("_ipai_extracted_at").to_pylist()):
        k = tuple(col[i] for col in keys)
        if k not in newest or at > newest[k][0]:
            newest[k] = (at, tuple(col[i] for col in values))
    return {k: v for k, (_, v) in newest.items()}


def differences(got: Versions, truth: Versions) -> list[str]:
    """What bronze's newest versions lack, add or hold differently from the truth (a few of each)."""
    missing = sorted(truth.keys() - got.keys(), key=repr)
    extra = sorted(got.keys() - truth.keys(), key=repr)
    stale = sorted((k for k in truth.keys() & got.keys() if truth[k] != got[k]), key=repr)
    out = []
    if missing:
        out.append(f"{len(missing)} source keys missing, e.g. {missing[:3]}")
    if extra:
        out.append(f"{len(extra)} keys the source does not have, e.g. {extra[:3]}")
    if stale:
        out.append(f"{len(stale)} keys with another version than the source's, e.g. "
                   + "; ".join(f"{k}: {got[k]} instead of {truth[k]}" for k in stale[:3]))
    return out


def assert_bronze_holds(table: pa.Table, truth: Versions, *, key: tuple[str, ...], version: tuple[str, ...],
                        where: str, one_extraction: bool) -> None:
    """Check one bronze table (`where` names it in messages) against the source's truth: no row twice in an
    extraction, and the newest version of every key is the source's, with no key the source lacks.

    `one_extraction`: the table's whole history is one complete extraction (a first sync, however many
    crashes and retries it took), so it must hold exactly the source's rows.
    """
    assert_exactly_once_per_extraction(table, key)
    if one_extraction:
        extractions = set(table.column("_ipai_extraction_id").to_pylist())
        assert len(extractions) == 1, f"{where}: rows from {len(extractions)} extractions, expected 1"
        assert table.num_rows == len(truth), f"{where}: {table.num_rows} rows, the source has {len(truth)}"
    wrong = differences(latest_versions(table, key, version), truth)
    assert not wrong, f"{where}: " + "; ".join(wrong)


def bronze_tables(spec: ConnectorSpec, stream: str, *, db_url: str, lakehouse_uri: str) -> dict[str, pa.Table]:
    """Both bronze copies of `stream`'s table, by destination and table (`Postgres raw_<instance>_<stream>`)."""
    table = address(spec).bronze_table(stream)
    return {f"Postgres {table}": bronze_postgres(db_url, bronze_table(spec, stream)),
            f"Delta {table}": bronze_delta(bronze_uri(spec, stream, lakehouse_uri))}


def _rows(table: pa.Table) -> Counter[tuple[str, ...]]:
    return Counter(tuple(repr(v) for v in row.values()) for row in table.to_pylist())


@dataclass(frozen=True)
class BronzeState:
    """Everything a write can change in an instance's bronze tables: per table, the Delta version and rows,
    the Postgres rows, and the Postgres load ledger's entries (commit id, rows, load time)."""

    delta_versions: dict[str, int]
    delta_rows: dict[str, Counter[tuple[str, ...]]]
    postgres_rows: dict[str, Counter[tuple[str, ...]]]
    ledger: dict[str, Counter[tuple[str, ...]]]

    @classmethod
    def of(cls, database: Database, lakehouse_uri: str, spec: ConnectorSpec, streams: list[str]) -> BronzeState:
        """The state of the bronze tables of `spec`'s `streams`, keyed by table (`raw_<instance>_<stream>`)."""
        tables = {address(spec).bronze_table(s): s for s in streams}
        uris = {t: bronze_uri(spec, s, lakehouse_uri) for t, s in tables.items()}
        with database.connect() as conn:
            ledger = conn.execute(f'select table_name, commit_id, rows::text, loaded_at::text'
                                  f' from "{bronze_schema(spec)}"._ipai_loads where table_name = any(%s)',
                                  (list(tables),)).fetchall()
        return cls(
            delta_versions={t: DeltaTable(uri).version() for t, uri in uris.items()},
            delta_rows={t: _rows(bronze_delta(uri)) for t, uri in uris.items()},
            postgres_rows={t: _rows(bronze_postgres(database.url, bronze_table(spec, s))) for t, s in tables.items()},
            ledger={t: Counter(tuple(r[1:]) for r in ledger if r[0] == t) for t in tables},
        )

    def changes_since(self, before: BronzeState) -> list[str]:
        """What differs from `before`, one line per table and destination."""
        out = []
        for table, version in self.delta_versions.items():
            if version != before.delta_versions[table]:
                out.append(f"Delta {table}: version {before.delta_versions[table]} -> {version}")
        for what, now, then in (("Delta", self.delta_rows, before.delta_rows),
                                ("Postgres", self.postgres_rows, before.postgres_rows),
                                ("the Postgres load ledger of", self.ledger, before.ledger)):
            for table in now:
                added, gone = now[table] - then[table], then[table] - now[table]
                if added or gone:
                    out.append(f"{what} {table}: {sum(added.values())} rows added, {sum(gone.values())} gone")
        return out


def reopen_extractions(database: Database, instance: str) -> int:
    """Make the next run of `instance` execute its last finished extraction of every stream again, partition by
    partition; return how many partitions it will read.

    The extraction is reopened and its recorded partitions are forgotten: the state a driver leaves when it
    dies after its writers committed every partition and before it recorded any. Bronze is not touched, so a
    run that then writes anything has written the same extraction twice.
    """
    with database.connect() as conn, conn.transaction():
        reopened = conn.execute(
            "update connector_extractions e set status = 'open', finished_at = null"
            " from connector_instances i where i.id = e.instance_id and i.name = %s and e.id in ("
            "  select distinct on (stream) id from connector_extractions where instance_id = i.id and status = 'done'"
            "  order by stream, created_at desc)"
            " returning e.id, jsonb_array_length(e.partitions)", (instance,)).fetchall()
        conn.execute("delete from connector_state where kind = 'partition' and extraction_id = any(%s)",
                     ([i for i, _ in reopened],))
    assert reopened, f"instance {instance!r} has no finished extraction to run again"
    return sum(n for _, n in reopened)
