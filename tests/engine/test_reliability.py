"""Reliability end to end (RELIABILITY.md tests 1, 2 and 4): processes killed mid-run, crash points at
every step of fetch -> write -> commit -> checkpoint, a conflicting second run, and Ctrl-C.

Everything is real: Postgres, Delta in a temp folder, the shared local Ray. Processes are killed with
SIGKILL, either from the test (found by the title Ray gives a worker while it runs a task) or by the
engine's own crash points. Each test then checks what a user would: bronze holds every source row once,
the run rows say what happened, and no partition in `connector_state` is ahead of the data.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from engine.controlplane.db import Database
from engine.run.driver import Progress
from engine.core.errors import RunCancelled, RunConflict
from engine.core.faults import DriverCrash, FaultPlan
from tests.support.shop import assert_synced, sample_spec
from tests.support.syncing import planned, recorded_by_extraction, sync
from tests.support.truth import assert_state_not_ahead_of_data

pytestmark = pytest.mark.usefixtures("ray_cluster")

WAIT_S = 90  # a deadline for polling and joins, far above what any step here takes


@contextmanager
def in_background(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[Future[Any]]:
    """Run `fn` in a thread (run_sync blocks) and wait for it on leaving the block."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sync") as pool:
        yield pool.submit(fn, *args, **kwargs)


def ray_workers(title_prefix: str) -> list[psutil.Process]:
    """Return this session's Ray processes whose title starts with `title_prefix`.

    The local Ray runs as descendants of this (driver) process, and Ray titles a worker
    `ray::<task name>` while it runs a task (`ray::BronzeWriter` for an idle writer actor); looking only
    at our descendants leaves any other Ray on the machine alone.
    """
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            title = proc.cmdline()
        except psutil.Error:
            continue  # exited while we looked
        if title and title[0].startswith(title_prefix):
            found.append(proc)
    return found


def kill_first(prefixes: tuple[str, ...], run: Future[Any], *, ignore: Collection[int] = (),
               when: Callable[[], bool] = lambda: True) -> str | None:
    """SIGKILL the first worker titled with one of `prefixes` (not in `ignore`) once `when()` holds;
    return its title, or None if `run` ended first."""
    deadline = time.monotonic() + WAIT_S
    while not run.done() and time.monotonic() < deadline:
        if when():
            for prefix in prefixes:
                for proc in ray_workers(prefix):
                    if proc.pid in ignore:
                        continue
                    try:
                        title = proc.cmdline()[0]
                        proc.send_signal(signal.SIGKILL)
                    except psutil.Error:
                        continue
                    return title
        time.sleep(0.02)
    return None


def runs(database: Database) -> list[tuple[str, str, str | None]]:
    """Return (run id, status, error) of every run, oldest first."""
    with database.connect() as conn:
        return [(str(i), s, e) for i, s, e in conn.execute(
            "select id, status, error from connector_runs order by created_at")]


# -- processes killed from outside ----------------------------------------------------------------------


def test_read_task_killed_mid_partition_is_retried_and_the_run_succeeds(settings, database):
    spec, text = sample_spec("kill_read", read_delay_ms=1500)
    with in_background(sync, settings, database, text) as run:
        killed = kill_first(("ray::read kill_read.orders",), run)
        result = run.result(timeout=WAIT_S)
    assert killed is not None and killed.startswith("ray::read kill_read.orders"), "no orders read was killed"
    assert result.status == "succeeded"
    assert [s for _, s, _ in runs(database)] == ["succeeded"]
    assert result.rows_by_stream == {"customers": 3000, "orders": 20000}
    assert_synced(spec, settings, database)


def test_writer_actor_killed_mid_run_is_restarted_and_the_run_succeeds(settings, database):
    spec, text = sample_spec("kill_writer", read_delay_ms=800, streams=("orders",))
    committed = threading.Event()

    def on_progress(p: Progress) -> None:
        if p.partitions_done:
            committed.set()

    # Writers still alive from earlier tests are not this run's; the orders writer is the only new one.
    earlier = {p.pid for p in ray_workers("ray::BronzeWriter") + ray_workers("ray::write ")}
    with in_background(sync, settings, database, text, on_progress=on_progress) as run:
        # Kill it after a first commit, so later partitions go through the restarted actor; busy or idle.
        killed = kill_first(("ray::write kill_writer.orders", "ray::BronzeWriter"), run, ignore=earlier,
                            when=committed.is_set)
        result = run.result(timeout=WAIT_S)
    assert killed is not None, "the run ended before its writer could be killed"
    assert result.status == "succeeded"
    assert [s for _, s, _ in runs(database)] == ["succeeded"]
    assert result.rows_by_stream == {"orders": 20000}
    assert_synced(spec, settings, database)


# -- crash points -------------------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["read.after_fetch", "writer.before_commit", "writer.after_delta",
                                   "writer.after_postgres"])
def test_worker_killed_at_a_crash_point_is_replayed_without_duplicates(point, settings, database, tmp_path: Path):
    spec, text = sample_spec(f"crash_{point.replace('.', '_')}")
    faults = FaultPlan(points=(point,), marker_dir=str(tmp_path))
    result = sync(settings, database, text, faults=faults)
    assert (tmp_path / point).exists(), f"crash point {point} was never reached"
    assert result.status == "succeeded"
    assert result.rows_by_stream == {"customers": 3000, "orders": 20000}, "a replayed partition counted twice"
    assert [s for _, s, _ in runs(database)] == ["succeeded"]
    assert_synced(spec, settings, database)


@pytest.mark.parametrize(("point", "streams"), [
    ("driver.before_checkpoint", ("customers", "orders")),
    ("driver.after_checkpoint", ("customers", "orders")),
    # customers is one partition: the driver dies with all of it recorded but the extraction still open.
    ("driver.after_checkpoint", ("customers",)),
], ids=["before_checkpoint", "after_checkpoint", "after_last_checkpoint"])
def test_driver_dying_at_a_checkpoint_leaves_state_behind_data_and_the_next_run_resumes(
    point, streams, settings, database, tmp_path: Path,
):
    spec, text = sample_spec(f"crash_{point.replace('.', '_')}", streams=streams)
    faults = FaultPlan(points=(point,), marker_dir=str(tmp_path))
    with pytest.raises(DriverCrash):
        sync(settings, database, text, faults=faults, lease_seconds=1)
    [(crashed_id, status, _)] = runs(database)
    assert status == "running", "a dead driver cannot mark its run; the lease does"
    recorded = assert_state_not_ahead_of_data(database.url, settings.lakehouse_uri, spec)
    assert (recorded > 0) == (point == "driver.after_checkpoint")
    before = recorded_by_extraction(database)

    time.sleep(1.5)  # the dead driver's one-second lease runs out
    second = sync(settings, database, text)
    assert second.status == "succeeded"
    (first_id, first_status, first_error), (second_id, second_status, _) = runs(database)
    assert (first_id, first_status) == (crashed_id, "failed")
    assert (second_id, second_status) == (second.run_id, "succeeded")
    assert "lease expired" in (first_error or "")
    plans = planned(database, second.run_id)
    assert all(p["resumed"] for p in plans.values()), plans
    for p in plans.values():
        assert p["to_read"] == p["partitions"] - before.get(p["extraction_id"], 0), p
    assert_synced(spec, settings, database)


# -- runs that meet or stop each other ----------------------------------------------------------------


def test_second_run_while_one_is_active_is_refused_with_the_active_run_id(settings, database):
    spec, text = sample_spec("conflict", streams=("orders",))
    running, checked = threading.Event(), threading.Event()

    def hold(p: Progress) -> None:
        # Keeps the first run active (inside its progress callback) until the second one was tried.
        running.set()
        assert checked.wait(WAIT_S)

    with in_background(sync, settings, database, text, on_progress=hold) as first:
        assert running.wait(WAIT_S), "the first run never reported progress"
        try:
            with pytest.raises(RunConflict) as refused:
                sync(settings, database, text)
        finally:
            checked.set()
        result = first.result(timeout=WAIT_S)
    assert refused.value.active_run_id == result.run_id
    assert result.run_id in str(refused.value)
    assert runs(database) == [(result.run_id, "succeeded", None)]
    assert_synced(spec, settings, database)


def test_ctrl_c_cancels_the_run_keeps_committed_partitions_and_the_next_run_reads_only_the_rest(
    settings, database,
):
    # One partition at a time (one read in flight; rows buffered past 4 x commit_rows hold further reads
    # back), so when the first orders partition is committed every other one is still unread.
    spec, text = sample_spec("ctrl_c", streams=("orders", "customers"), max_in_flight=1, commit_rows=500)
    pressed = []

    def ctrl_c_after_first_commit(p: Progress) -> None:
        if p.partitions_done and not pressed:
            pressed.append(p.partitions_done)
            raise KeyboardInterrupt

    with pytest.raises(RunCancelled) as cancelled:
        sync(settings, database, text, on_progress=ctrl_c_after_first_commit)
    [(run_id, status, error)] = runs(database)
    assert (cancelled.value.run_id, status) == (run_id, "cancelled")
    assert "next run resumes" in (error or "")
    recorded = assert_state_not_ahead_of_data(database.url, settings.lakehouse_uri, spec)
    assert recorded >= pressed[0], "partitions committed before Ctrl-C must stay recorded"
    before = recorded_by_extraction(database)

    second = sync(settings, database, text)
    assert [s for _, s, _ in runs(database)] == ["cancelled", "succeeded"]
    plans = planned(database, second.run_id)
    for p in plans.values():
        assert p["to_read"] == p["partitions"] - before.get(p["extraction_id"], 0), p
    assert sum(p["to_read"] for p in plans.values()) > 0, "Ctrl-C came too late to leave anything unread"
    assert_synced(spec, settings, database)
