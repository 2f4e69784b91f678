"""The run queue end to end: triggers racing each other (RELIABILITY 8), claimers racing each other, a worker
killed mid-run whose run is retried from what it committed (RELIABILITY 7), and two schedulers with three
workers over several minutes of (simulated) cron ticks.

Everything is real: `ipai worker` and `ipai scheduler` run as subprocesses (each in its own process group, so a
SIGKILL takes the whole worker), against a fresh database on the test Postgres, the shared Ray instance of the
session and Delta in a temp folder. Nothing asserts on how long anything took: the tests wait for states
(with generous deadlines that only turn a hang into a failure) and check what the control plane and bronze hold.
"""

from __future__ import annotations

import json
import signal
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

from connectors.sample import SampleSpec
from engine.controlplane import records
from engine.controlplane.settings import Settings
from engine.controlplane.db import Database
from engine.controlplane.scheduler import tick
from connectors.specload import parse_spec
from engine.controlplane.queue import claim, worker_database
from tests.support.cli import Proc, processes, worker_args, worker_env
from tests.support.databases import migrated
from tests.support.rpc import create, rpc, tiny_spec
from tests.support.shop import assert_synced, sample_spec
from tests.support.syncing import planned, recorded_by_extraction
from tests.support.truth import assert_bronze_equals_source
from tests.support.waiting import WAIT_S, wait_for

pytestmark = pytest.mark.usefixtures("ray_cluster")


def run_rows(conn: psycopg.Connection[Any], instance_id: str) -> list[dict[str, Any]]:
    cur = conn.execute(
        "select id::text, status, trigger, attempt, retry_of::text, scheduled_for, worker_id, error, created_at"
        " from connector_runs where instance_id = %s order by created_at, scheduled_for", (instance_id,))
    names = [c.name for c in cur.description or []]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def log_events(conn: psycopg.Connection[Any], run_id: str) -> list[str]:
    return [e for (e,) in conn.execute("select event from connector_run_logs where run_id = %s order by id",
                                       (run_id,))]


# -- RELIABILITY 8: the same run triggered at once ------------------------------------------------------

CALLERS = 6


def _race(database: Database, settings: Settings, instance: str, fire_at: datetime,
          hold: psycopg.Connection[Any] | None = None) -> tuple[list[dict[str, Any]], int]:
    """CALLERS connections call connector_run on `instance` and one scheduler calls schedule_due(fire_at), all
    released together; return (the RPC answers, runs the scheduler enqueued).

    With `hold` (a connection inside a transaction that already queued the instance's run), the racers are
    all in flight against that uncommitted run before it commits."""
    barrier = threading.Barrier(CALLERS + 1)
    scheduler_db = database  # naming the fire time is an admin's (drills): the worker role ticks only at now()

    def call() -> dict[str, Any]:
        with database.connect() as conn:
            barrier.wait(timeout=30)
            return rpc(conn, "select public.connector_run(%s)", instance)

    def schedule() -> int:
        with scheduler_db.connect() as conn:
            barrier.wait(timeout=30)
            return tick(conn, fire_at)

    with ThreadPoolExecutor(max_workers=CALLERS + 1) as pool:
        answers = [pool.submit(call) for _ in range(CALLERS)]
        enqueued = pool.submit(schedule)
        if hold is not None:
            with database.connect() as watch:
                # Every RPC caller waits on the held run's uncommitted insert (one lock wait each), and so
                # does the scheduler (unless it has already passed the instance by).
                def lined_up() -> bool:
                    waiting = dict(watch.execute(
                        "select query like '%schedule_due(%', count(*) from pg_stat_activity"
                        " where datname = current_database() and wait_event_type = 'Lock' group by 1").fetchall())
                    return waiting.get(False, 0) == CALLERS and (waiting.get(True, 0) == 1 or enqueued.done())

                wait_for("the racers to queue up behind the held run", lined_up)
            hold.commit()
        return [f.result(timeout=WAIT_S) for f in answers], enqueued.result(timeout=WAIT_S)


def _assert_one_run(conn: psycopg.Connection[Any], instance_id: str, answers: list[dict[str, Any]],
                    created_elsewhere: int, slot: datetime) -> dict[str, Any]:
    """The invariants of RELIABILITY 8 once every trigger has answered: return the one active run."""
    runs = run_rows(conn, instance_id)
    active = [r for r in runs if r["status"] in ("queued", "running")]
    assert len(active) == 1, runs
    [run] = active
    assert all(a["ok"] for a in answers), answers
    assert {a["run_id"] for a in answers} == {run["id"]}, "callers were given different runs"
    assert sum(a["created"] for a in answers) + created_elsewhere == 1, answers
    assert log_events(conn, run["id"]).count("run.queued" if run["trigger"] == "rpc" else "run.scheduled") == 1
    at_slot = [r for r in runs if r["scheduled_for"] == slot]
    assert len(at_slot) == 1, f"fire time {slot} recorded {len(at_slot)} times: {runs}"
    return run


ROUNDS = 6  # who wins differs from round to round; a deadlock between scheduler and callers shows in some


def test_simultaneous_rpc_calls_and_a_due_fire_time_make_one_run(database, settings):
    migrated(database)
    with database.connect() as conn:
        inst = create(conn, tiny_spec("race"), schedule="* * * * *")["instance_id"]
        base = conn.execute("select now()").fetchone()[0]
    for k in range(1, ROUNDS + 1):
        fire_at = base + timedelta(minutes=k)
        with database.connect() as conn:
            slot = conn.execute("select ipai.cron_prev('* * * * *', %s)", (fire_at,)).fetchone()[0]
        answers, enqueued = _race(database, settings, "race", fire_at)
        with database.connect() as sched:
            # The next tick, as a scheduler would make it: a fire time is recorded once, whichever tick sees it.
            later = tick(sched, fire_at)
        with database.connect() as conn:
            run = _assert_one_run(conn, inst, answers, enqueued + later, slot)
            [recorded] = [r for r in run_rows(conn, inst) if r["scheduled_for"] == slot]
            if recorded["status"] == "queued":  # the scheduler won: every RPC caller was handed the scheduled run
                assert recorded["id"] == run["id"] and run["trigger"] == "schedule"
                assert not any(a["created"] for a in answers)
            else:  # an RPC call won: the fire time found it active
                assert run["trigger"] == "rpc"
                assert recorded["status"] == "skipped" and run["id"] in recorded["error"], recorded
            # The run ends (as a worker would end it), so the next round starts from an idle instance.
            conn.execute("update connector_runs set status = 'succeeded', ended_at = now() where id = %s",
                         (run["id"],))


def test_fire_time_while_an_rpc_run_is_being_queued_is_skipped_naming_it(database, settings):
    """The deterministic order of the race above: one RPC call's insert is in flight (uncommitted) while the
    other callers and the scheduler arrive; all of them must end up with that one run."""
    migrated(database)
    with database.connect() as conn:
        inst = create(conn, tiny_spec("held"), schedule="* * * * *")["instance_id"]
        fire_at, slot = conn.execute("select now() + interval '1 minute',"
                                     " ipai.cron_prev('* * * * *', now() + interval '1 minute')").fetchone()
    with psycopg.connect(database.url) as hold:  # not autocommit: the first call stays uncommitted
        first = rpc(hold, "select public.connector_run(%s)", "held")
        assert first["created"] is True
        answers, enqueued = _race(database, settings, "held", fire_at, hold=hold)
    with database.connect() as sched:
        later = tick(sched, fire_at)
    with database.connect() as conn:
        run = _assert_one_run(conn, inst, [first, *answers], enqueued + later, slot)
        [recorded] = [r for r in run_rows(conn, inst) if r["scheduled_for"] == slot]
    assert run["id"] == first["run_id"] and run["trigger"] == "rpc"
    assert not any(a["created"] for a in answers)
    assert recorded["status"] == "skipped", recorded
    assert recorded["error"] == f"skipped: run {first['run_id']} was still active at the fire time"
    assert enqueued + later == 0


# -- claims race ----------------------------------------------------------------------------------------

CLAIMERS = 6
QUEUED = 24


def test_concurrent_claimers_never_take_a_run_twice(database, settings):
    migrated(database)
    with database.connect() as conn:
        for i in range(QUEUED):
            create(conn, tiny_spec(f"claim_{i:02d}"))
            assert rpc(conn, "select public.connector_run(%s)", f"claim_{i:02d}")["created"]
        queued = {r for (r,) in conn.execute("select id::text from connector_runs where status = 'queued'")}
    assert len(queued) == QUEUED

    workers = worker_database(settings)
    barrier = threading.Barrier(CLAIMERS)

    def claimer(n: int) -> list[str]:
        taken = []
        with workers.connect() as conn:  # as the ipai_worker role, under row-level security
            barrier.wait(timeout=30)
            while (job := claim(conn, f"claimer-{n}", 60)) is not None:
                taken.append(job.run_id)
        return taken

    with ThreadPoolExecutor(max_workers=CLAIMERS) as pool:
        results = list(pool.map(claimer, range(CLAIMERS)))
    every = [r for taken in results for r in taken]
    twice = [r for r, n in Counter(every).items() if n > 1]
    assert not twice, f"runs claimed more than once: {twice}"
    assert set(every) == queued, "a queued run was left behind"
    with database.connect() as conn:
        holders = dict(conn.execute("select id::text, worker_id from connector_runs"))
        statuses = {s for (s,) in conn.execute("select distinct status from connector_runs")}
    assert statuses == {"running"}
    for n, taken in enumerate(results):
        assert all(holders[r] == f"claimer-{n}" for r in taken), "a run's worker_id is not its claimer"


# -- RELIABILITY 7: a worker killed mid-run -------------------------------------------------------------


def _register(conn: psycopg.Connection[Any], spec: SampleSpec, text: str) -> str:
    return records.register(conn, spec, text).instance_id


def test_worker_killed_mid_run_is_retried_from_what_it_committed(tmp_path, settings, database):
    # One read at a time, each slowed, every partition committed on its own: when the first is recorded the
    # rest of the orders are still unread.
    spec, text = sample_spec("killed", read_delay_ms=600, streams=("orders", "customers"), max_in_flight=1,
                             commit_rows=500)
    migrated(database)
    with database.connect() as conn:
        instance = _register(conn, spec, text)
        first = rpc(conn, "select public.connector_run(%s)", "killed")["run_id"]
    env = worker_env(settings)
    with processes() as procs, database.connect() as conn:
        doomed = Proc("worker1", worker_args(lease=3), env, tmp_path)
        procs.append(doomed)
        wait_for("a first partition to be committed", lambda: conn.execute(
            "select count(*) from connector_state where kind = 'partition'").fetchone()[0] >= 1,
            every=0.05, alive=doomed.assert_running)
        doomed.kill()
        assert doomed.popen.returncode == -signal.SIGKILL
        status, holder = conn.execute("select status, worker_id from connector_runs where id = %s",
                                      (first,)).fetchone()
        assert status == "running", "the killed worker's run must still look running until its lease expires"
        [claimed] = doomed.events("run.claimed")
        assert claimed["run_id"] == first and holder == doomed.events("worker.started")[0]["worker"]
        before = recorded_by_extraction(database)
        assert 0 < sum(before.values()) < 6

        rescuer = Proc("worker2", worker_args(lease=3), env, tmp_path)
        procs.append(rescuer)
        # SIGTERM once the retry is reading on Ray (a partition of its own recorded, several still to read): the
        # worker must finish that run, then stop.
        retry = wait_for("the retry to record a partition", lambda: conn.execute(
            "select r.id::text from connector_runs r join connector_state s on s.run_id = r.id"
            " where r.retry_of = %s and s.kind = 'partition' limit 1", (first,)).fetchone(),
            every=0.05, alive=rescuer.assert_running)[0]
        rescuer.signal(signal.SIGTERM)
        assert rescuer.popen.wait(timeout=WAIT_S) == 0, rescuer.stdout + rescuer.stderr
        runs = {r["id"]: r for r in run_rows(conn, instance)}
    assert list(runs) == [first, retry], runs
    assert runs[first]["status"] == "failed" and runs[first]["error"].startswith("lease expired"), runs[first]
    assert runs[retry]["status"] == "succeeded", runs[retry]
    assert (runs[retry]["attempt"], runs[retry]["retry_of"], runs[retry]["trigger"]) == (2, first, "retry")
    assert [e["message"] for e in rescuer.events("worker.stopping")] == [
        f"finishing run {retry}, then stopping (again to cancel it)"]
    assert runs[retry]["worker_id"] == rescuer.events("worker.started")[0]["worker"]
    reaped = rescuer.events("run.lease_expired")
    assert [(e["run_id"], e["retry_run_id"]) for e in reaped] == [(first, retry)]
    assert [e["run_id"] for e in rescuer.events("run.claimed")] == [retry]

    plans = planned(database, retry)
    assert plans["orders"]["resumed"] is True, plans
    for p in plans.values():
        if p["resumed"]:
            assert p["to_read"] == p["partitions"] - before.get(p["extraction_id"], 0), p
    assert sum(p["to_read"] for p in plans.values()) > 0
    with database.connect() as conn:
        assert "run.retry" in log_events(conn, retry)
    assert_synced(spec, settings, database)


# -- two schedulers, three workers ----------------------------------------------------------------------

CRON = ["cron_a", "cron_b", "cron_c"]
SPEED = 20.0  # one simulated minute every 3 s of real time
FIRES = 4  # fire times per instance before the schedulers are stopped


def test_two_schedulers_and_three_workers_run_each_fire_time_once(tmp_path, settings, database):
    migrated(database)
    env = worker_env(settings)
    with database.connect() as conn:
        ids = {n: create(conn, tiny_spec(n), schedule="* * * * *")["instance_id"] for n in CRON}
        since = dict(conn.execute("select id::text, last_scheduled_for from connector_instances"))
        start = conn.execute("select now()").fetchone()[0]
    with processes() as procs, database.connect() as conn:
        workers = [Proc(f"worker{i}", worker_args(), env, tmp_path) for i in range(3)]
        procs.extend(workers)
        schedulers = [Proc(f"scheduler{i}", ["scheduler", "--simulate-from", start.isoformat(), "--speed",
                                             str(SPEED), "--interval", "0.5"], env, tmp_path) for i in range(2)]
        procs.extend(schedulers)

        def all_alive() -> None:
            for p in procs:
                p.assert_running()

        def workers_alive() -> None:
            for p in workers:
                p.assert_running()

        wait_for(f"{FIRES} fire times of every instance", lambda: conn.execute(
            "select count(*) = %s from (select instance_id from connector_runs where scheduled_for is not null"
            " group by instance_id having count(*) >= %s) x", (len(CRON), FIRES)).fetchone()[0],
            every=0.5, alive=all_alive)
        for p in schedulers:
            assert p.stop() == 0, p.stderr
        wait_for("the workers to drain the queue", lambda: conn.execute(
            "select count(*) = 0 from connector_runs where status in ('queued', 'running')").fetchone()[0],
            every=0.5, alive=workers_alive)  # the schedulers have just been stopped
        for p in workers:
            assert p.stop() == 0, p.stderr

        # Which worker claimed what, from the workers' own output.
        claims = Counter(e["run_id"] for p in workers for e in p.events("run.claimed"))
        worker_ids = {p.events("worker.started")[0]["worker"] for p in workers}
        enqueued_events = sum(e["runs"] for p in schedulers for e in p.events("scheduler.enqueued"))
        assert all(p.events("scheduler.started") for p in schedulers)

        total = 0
        for name, inst in ids.items():
            runs = run_rows(conn, inst)
            assert all(r["scheduled_for"] is not None and r["trigger"] == "schedule" for r in runs), runs
            slots = [r["scheduled_for"] for r in sorted(runs, key=lambda r: r["scheduled_for"])]
            first = conn.execute("select ipai.cron_next('* * * * *', %s)", (since[inst],)).fetchone()[0]
            assert slots[0] == first, f"{name}: first fire time {slots[0]}, expected {first}"
            assert slots == [first + timedelta(minutes=i) for i in range(len(slots))], (
                f"{name}: fire times not consecutive minutes, each once: {slots}")
            by_id = {r["id"]: r for r in runs}
            for r in runs:
                assert r["status"] in ("succeeded", "skipped"), r
                if r["status"] == "skipped":
                    named = r["error"].removeprefix("skipped: run ").removesuffix(" was still active at the fire time")
                    assert named in by_id and by_id[named]["status"] == "succeeded", (r, runs)
                    assert by_id[named]["created_at"] < r["created_at"]
                    continue
                total += 1
                assert claims[r["id"]] == 1, f"{name}: run {r['id']} claimed {claims[r['id']]} times"
                assert r["worker_id"] in worker_ids, r
                events = log_events(conn, r["id"])
                assert events.count("run.started") == 1 and events.count("run.succeeded") == 1, events
                missed = conn.execute("select fields->>'missed' from connector_run_logs where run_id = %s"
                                      " and event = 'run.scheduled'", (r["id"],)).fetchone()
                assert missed == ("0",), f"{name}: run {r['id']} folded missed fire times: {missed}"
            assert runs[0]["status"] == "succeeded", f"{name}: nothing was active at the first fire time"
        assert sum(claims.values()) == total == enqueued_events, "a claim or an enqueue not matched by a run"

    for name in CRON:
        spec = parse_spec(json.dumps(tiny_spec(name)))
        assert isinstance(spec, SampleSpec)
        assert_bronze_equals_source(spec, "customers", db_url=database.url, lakehouse_uri=settings.lakehouse_uri)
