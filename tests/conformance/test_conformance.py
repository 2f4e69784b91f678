"""Connector conformance: the same checks for every connector in `connectors.CONNECTORS`, against its source.

1. A full sync equals the source's truth, in Delta and in Postgres bronze: every key once, its version.
2. After new and updated records at the source, an incremental sync brings bronze to the truth again, reading
   the changes and not everything.
3. Running the same extraction again (every partition re-read, as after a driver that died before recording
   anything) changes nothing: the same rows, the same Delta version, the same load ledger.
4. A read task killed (SIGKILL, the engine's `read.after_fetch` crash point) loses and duplicates nothing.
5. The connector's credential, set to a canary, reaches no table, run log or file (database, lakehouse,
   home, Ray's logs), in any encoding.

Each connector's case (tests/conformance/cases.py) says how to start, read and change its source. One source
and one scratch database serve all checks of a case: checks 1, 3 and 5 look at one first full sync, checks 2
and 4 sync instances of their own (their own tables), and check 5 searches what every check left behind.
The checks are parametrised by the registry, so a connector registered without a case fails here too.
A control at the end shows check 3 failing on a replay that does write twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from connectors import SOURCE_TYPES
from connectors.specload import parse_spec
from engine.controlplane.db import Database
from engine.controlplane.settings import Settings
from engine.core.faults import FaultPlan
from engine.core.spec import ConnectorSpec
from engine.run.driver import RunResult
from tests.conformance.cases import CASES, Case, Scratch, Source
from tests.support.canary import Sinks, forms, ray_logs
from tests.support.conformance import (
    BronzeState, Versions, assert_bronze_holds, bronze_tables, reopen_extractions,
)
from tests.support.databases import migrated, scratch_database
from tests.support.syncing import planned, sync
from tests.support.truth import address, assert_state_not_ahead_of_data, bronze_schema, bronze_table
from tests.support.vault import Vault

pytestmark = pytest.mark.integration


@dataclass
class World:
    """One case's started source, scratch database, home and lakehouse, shared by its checks."""

    case: Case
    source: Source
    database: Database
    settings: Settings
    canary: str

    def instance(self, check: str) -> str:
        """The instance a check syncs: its own bronze tables and state."""
        return f"{self.case.source_type}_{check}"

    def spec(self, instance: str) -> str:
        return self.case.spec(self.source, instance)

    def parsed(self, instance: str) -> ConnectorSpec:
        """The instance's spec, validated."""
        return parse_spec(self.spec(instance))

    def sync(self, instance: str, **options: Any) -> RunResult:
        result = sync(self.settings, self.database, self.spec(instance), **options)
        assert result.status == "succeeded", result
        return result

    def truth(self) -> dict[str, Versions]:
        return {s.name: self.case.truth(self.source, s) for s in self.case.streams}

    def state(self, instance: str) -> BronzeState:
        """Everything a write can change in the instance's bronze."""
        return BronzeState.of(self.database, self.settings.lakehouse_uri, self.parsed(instance),
                              [s.name for s in self.case.streams])

    def bronze(self, instance: str, stream: str) -> dict[str, pa.Table]:
        return bronze_tables(self.parsed(instance), stream, db_url=self.database.url,
                             lakehouse_uri=self.settings.lakehouse_uri)

    def assert_one_extraction_equals_truth(self, instance: str, result: RunResult,
                                           truth_now: dict[str, Versions] | None = None) -> None:
        """Bronze of `instance`, whose history is one complete extraction, holds the source's records once."""
        for stream, truth in (truth_now or self.truth()).items():
            assert truth, f"{stream}: the source holds nothing to compare with"
            check = self.case.stream(stream)
            for where, table in self.bronze(instance, stream).items():
                assert_bronze_holds(table, truth, key=check.key, version=check.version, where=where,
                                    one_extraction=True)
            assert result.rows_by_stream[stream] == len(truth), f"{stream}: the run counted a row twice or not"


@pytest.fixture(scope="module", params=SOURCE_TYPES)
def world(request: pytest.FixtureRequest, admin_url: str, ray_cluster: None,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The world of one registered connector: its case's source started with a fresh canary as credential."""
    source_type = request.param
    case = CASES.get(source_type)
    if case is None:
        pytest.fail(f"connector {source_type!r} is registered without a conformance case in "
                    "tests/conformance/cases.py", pytrace=False)
    folder = tmp_path_factory.mktemp(source_type)
    canary = f"canary-{source_type}-{uuid.uuid4().hex}"
    with scratch_database(admin_url) as database, pytest.MonkeyPatch.context() as env:
        env.setenv("IPAI_DEV_MODE", "1")  # the emulators speak plain HTTP on loopback
        env.setenv("IPAI_CREDENTIAL_IDLE_S", "20")  # a case's credential actor goes soon after its checks
        migrated(database)
        settings = Settings(home=folder / "home", database_url=database.url,
                            lakehouse_uri=str(folder / "lakehouse"), ray_address=None)
        with case.start(Scratch(database, Vault(settings, database)), canary) as source:
            yield World(case, source, database, settings, canary)


# -- the checks ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FirstSync:
    """The case's first full sync, and what the source held then."""

    instance: str
    result: RunResult
    truth: dict[str, Versions]


@pytest.fixture(scope="module")
def first(world: World) -> FirstSync:
    """One full sync per case that checks 1, 3 and 5 look at (a sync is most of what a check costs)."""
    instance = world.instance("full")
    result = world.sync(instance)
    return FirstSync(instance, result, world.truth())


def test_a_full_sync_equals_the_source(world: World, first: FirstSync) -> None:
    world.assert_one_extraction_equals_truth(first.instance, first.result, first.truth)


def test_an_incremental_sync_after_changes_equals_the_source(world: World) -> None:
    if world.case.no_incremental:
        pytest.skip(f"{world.case.source_type} has no incremental mode: {world.case.no_incremental}")
    instance = world.instance("incremental")
    world.sync(instance)
    before = world.truth()
    world.case.change(world.source)
    after = world.truth()
    changed = {s: {k for k, v in truth.items() if before[s].get(k) != v} for s, truth in after.items()}
    assert any(changed.values()), "the case's change() changed nothing at the source"

    second = world.sync(instance)
    assert 0 < second.rows < sum(map(len, after.values())), "an incremental sync reads the changes, not everything"
    for stream, truth in after.items():
        check = world.case.stream(stream)
        for where, table in world.bronze(instance, stream).items():
            assert_bronze_holds(table, truth, key=check.key, version=check.version, where=where,
                                one_extraction=False)
            latest = table.filter(pc.equal(table.column("_ipai_run_id").cast(pa.string()), second.run_id))
            read = set(zip(*(latest.column(c).to_pylist() for c in check.key)))
            assert changed[stream] <= read, f"{where}: changed records the incremental run did not read"


def test_the_same_extraction_run_again_changes_nothing(world: World, first: FirstSync) -> None:
    before = world.state(first.instance)
    to_read = reopen_extractions(world.database, first.instance)
    again = world.sync(first.instance)
    plans = planned(world.database, again.run_id)
    assert sum(p["to_read"] for p in plans.values()) == to_read > 0, plans
    assert all(p["resumed"] for p in plans.values()), "the run planned a new extraction instead"
    changes = world.state(first.instance).changes_since(before)
    assert not changes, "the same extraction written again changed bronze: " + "; ".join(changes)


def test_a_killed_read_task_loses_and_duplicates_nothing(world: World, tmp_path: Path) -> None:
    instance = world.instance("killed")
    faults = FaultPlan(points=("read.after_fetch",), marker_dir=str(tmp_path))
    result = world.sync(instance, faults=faults)
    assert (tmp_path / "read.after_fetch").exists(), "no read task reached the crash point"
    world.assert_one_extraction_equals_truth(instance, result)
    spec = world.parsed(instance)
    assert assert_state_not_ahead_of_data(world.database.url, world.settings.lakehouse_uri, spec) > 0


def text_value(table: pa.Table) -> str:
    """A longish text value of a source column of `table` (to prove a search sees that table)."""
    for field in table.schema:
        if pa.types.is_string(field.type) and not field.name.startswith("_ipai"):
            values = [v for v in table.column(field.name).to_pylist() if v and len(v) >= 4]
            if values:
                return str(max(values, key=len))
    raise AssertionError(f"no text column with values in {table.schema.names}")


def test_the_canary_secret_reaches_no_table_log_or_file(world: World, first: FirstSync) -> None:
    if world.case.no_secret:
        pytest.skip(f"{world.case.source_type} has no credential: {world.case.no_secret}")
    stream = world.case.streams[0].name
    spec = world.parsed(first.instance)
    schema, table = bronze_schema(spec), address(spec).bronze_table(stream)
    with world.database.connect() as conn:
        [(extraction,)] = conn.execute("select id::text from connector_extractions where run_id = %s and stream = %s",
                                       (first.result.run_id, stream)).fetchall()
    home, lakehouse, ray_folder = world.settings.home, Path(world.settings.lakehouse_uri), ray_logs()
    sinks = Sinks(world.database.url, {}, tables={("vault", "secrets"), ("public", "connector_run_logs"),
                                                  ("public", "connector_runs"), (schema, table)})

    # Every search sees its sink: strings that are not secret are found where they must be.
    probe = text_value(world.bronze(first.instance, stream)[f"Postgres {table}"]).encode()
    assert bronze_table(spec, stream) in " ".join(sinks.database([probe])), "the search missed bronze"
    assert "public.connector_run_logs" in " ".join(sinks.database([stream.encode()])), "the search missed the logs"
    in_lakehouse = sinks.files(lakehouse, [extraction.encode()])
    assert any("_delta_log" in h and ".json " in h for h in in_lakehouse), "the search missed the Delta log"
    assert any(".parquet " in h for h in in_lakehouse), "the search missed parquet"
    assert any("vault.key" in h for h in sinks.files(home, [(home / "vault.key").read_bytes()[:16]]))
    assert any("raylet" in h for h in sinks.files(ray_folder, [b"raylet"])), "the search missed Ray's logs"

    # The canary, in every form, nowhere: after this sync and those of the case's other checks.
    needles = forms(world.canary)
    assert sinks.database(needles) == []
    assert sinks.files(lakehouse, needles) == []
    assert sinks.files(home, needles, skip=("vault.key",)) == []
    assert sinks.files(ray_folder, needles) == []


# -- a control: the replay check can fail ---------------------------------------------------------------------


def test_control_a_replay_that_writes_twice_is_caught(database: Database, settings: Settings, vault: Vault,
                                                      ray_cluster: None) -> None:
    """Check 3 must catch a replay that writes the same extraction twice, or it could catch nothing: with the
    Postgres load ledger forgotten, the Postgres writer cannot tell the partitions are loaded, and loads
    them again (Delta still knows them by its app-transaction markers)."""
    case = CASES["sample"]
    with case.start(Scratch(database, vault), "") as source:
        world = World(case, source, database, settings, canary="")
        instance = world.instance("control")
        world.sync(instance)
        before = world.state(instance)
        reopen_extractions(database, instance)
        spec = world.parsed(instance)
        tables = list(before.postgres_rows)
        with database.connect() as conn:
            conn.execute(f'delete from "{bronze_schema(spec)}"._ipai_loads where table_name = any(%s)', (tables,))
        world.sync(instance)
        changes = world.state(instance).changes_since(before)
        truth = world.truth()
        orders = world.bronze(instance, "orders")
    table = address(spec).bronze_table("orders")
    assert f"Postgres {table}: {len(truth['orders'])} rows added, 0 gone" in changes, changes
    assert not any(c.startswith("Delta") for c in changes), changes
    check = case.stream("orders")
    with pytest.raises(AssertionError, match="more than once in one extraction"):
        assert_bronze_holds(orders[f"Postgres {table}"], truth["orders"], key=check.key,
                            version=check.version, where="Postgres", one_extraction=True)
