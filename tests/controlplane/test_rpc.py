"""The RPC functions agents and CI call (FR-023), as SQL and through the CLI, against real Postgres, real workers
and, for secrets, the GitHub emulator over real HTTP.

    connector_create / connector_list   validation answers (invalid_schedule, invalid_spec with every error)
    connector_run / connector_status / connector_logs   a run queued, executed by a worker, read back and paged
    another tenant's instance or run    the very answer a made-up one gets (no existence leak)
    a secret that does not exist        the run fails before any request, naming it
    ipai run / instances / secret set / secret list   the same through `ipai` subprocesses
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from engine.controlplane.settings import Settings
from engine.controlplane.db import Database
from engine.run.worker import Worker
from tests.emulators.harness import EmulatorProcess
from tests.support.cli import Proc, env_for, ipai, processes, worker_args, worker_env
from tests.support.databases import migrated
from tests.support.rpc import create, rpc, tiny_spec
from tests.support.waiting import WAIT_S, wait_for

pytestmark = pytest.mark.usefixtures("ray_cluster")

LOCAL = "00000000-0000-0000-0000-000000000001"


def serve_one(settings: Settings) -> Worker:
    """Run one queued run with an in-process worker (as `ipai worker --max-runs 1` would); the test process's
    signal handlers are put back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    worker = Worker(settings, poll_s=0.2, max_runs=1, idle_exit_s=WAIT_S)
    try:
        assert worker.serve() == 1, "the worker found no run to execute"
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    return worker


@contextmanager
def as_user(database: Database, user_id: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection acting as a signed-in Supabase user, exactly as PostgREST sets one up."""
    with psycopg.connect(database.url) as conn:
        conn.execute("set local role authenticated")
        conn.execute("select set_config('request.jwt.claims', %s, true)",
                     (json.dumps({"sub": user_id, "role": "authenticated"}),))
        yield conn


# -- connector_create / connector_list -------------------------------------------------------------------


def test_connector_create_lists_the_instance_with_its_next_run(database):
    migrated(database)
    with database.connect() as conn:
        made = create(conn, tiny_spec("nightly"), schedule="30 2 * * *")
        expected = conn.execute("select ipai.cron_next('30 2 * * *', now())").fetchone()[0]
        manual = create(conn, tiny_spec("manual"), env="prod")
        again = create(conn, tiny_spec("nightly"), schedule="30 2 * * *")
        changed = create(conn, tiny_spec("nightly", customers=2000), schedule="30 2 * * *")
        listed = rpc(conn, "select public.connector_list()")
    assert (made["name"], made["env"], made["version"]) == ("nightly", "dev", 1)
    assert made["next_run_at"] == expected.isoformat()
    assert (manual["env"], manual["next_run_at"]) == ("prod", None)
    assert (again["version"], again["instance_id"]) == (1, made["instance_id"]), "the same spec is no new version"
    assert (changed["version"], changed["instance_id"]) == (2, made["instance_id"])
    assert listed["ok"] is True
    by_name = {i["name"]: i for i in listed["instances"]}
    assert set(by_name) == {"nightly", "manual"}
    nightly = by_name["nightly"]
    assert (nightly["instance_id"], nightly["schedule"], nightly["source_type"], nightly["status"],
            nightly["version"], nightly["last_run"]) == (made["instance_id"], "30 2 * * *", "sample", "active", 2, None)
    assert nightly["next_run_at"] == expected.isoformat()
    assert by_name["manual"]["next_run_at"] is None and by_name["manual"]["env"] == "prod"


def test_connector_create_explains_an_invalid_schedule_and_every_invalid_field(database):
    migrated(database)
    with database.connect() as conn:
        bad_cron = rpc(conn, "select public.connector_create(%s::jsonb, null, %s)", json.dumps(tiny_spec("c")),
                       "61 * * * *")
        never = rpc(conn, "select public.connector_create(%s::jsonb, null, %s)", json.dumps(tiny_spec("c")),
                    "0 0 30 2 *")
        several = rpc(conn, "select public.connector_create(%s::jsonb, %s, null)",
                      json.dumps({"name": "1bad", "source_type": "hubspot", "schedule": "* * *"}), "Prod")
        not_object = rpc(conn, "select public.connector_create(%s::jsonb)", json.dumps(["name", "x"]))
        listed = rpc(conn, "select public.connector_list()")

    assert bad_cron["ok"] is False and bad_cron["error"]["code"] == "invalid_schedule", bad_cron
    reason = "invalid schedule '61 * * * *': minute field: 61 is out of range 0-59"
    assert bad_cron["error"]["details"]["errors"] == [{"path": "schedule", "message": reason}]
    assert reason in bad_cron["error"]["message"]
    assert never["error"]["code"] == "invalid_schedule" and "never fires" in never["error"]["message"]

    assert several["ok"] is False and several["error"]["code"] == "invalid_spec", several
    errors = {e["path"]: e["message"] for e in several["error"]["details"]["errors"]}
    assert set(errors) == {"name", "source_type", "env", "schedule"}, errors
    assert "lower case letters" in errors["name"]
    assert errors["source_type"] == "unknown source_type 'hubspot'; known: database, ga4, github, http, odoo, sample"
    assert "lower case letters" in errors["env"]
    assert errors["schedule"] == "invalid schedule '* * *': needs 5 fields (minute hour day-of-month month " \
                                 "day-of-week), got 3"
    for path, message in errors.items():
        assert f"{path}: {message}" in several["error"]["message"]

    assert not_object["error"]["code"] == "invalid_spec"
    assert not_object["error"]["details"]["errors"] == [{"path": "", "message": "expected an object"}]
    assert listed == {"ok": True, "instances": []}, "a refused spec created something"


# -- connector_run / connector_status / connector_logs ---------------------------------------------------


def test_run_status_and_paged_logs_of_a_run_a_worker_executed(database, settings):
    migrated(database)
    with database.connect() as conn:
        create(conn, tiny_spec("paged", streams=("customers", "orders")))
        queued = rpc(conn, "select public.connector_run(%s)", "paged")
        before = rpc(conn, "select public.connector_status(%s)", queued["run_id"])
    assert queued["ok"] and queued["created"] is True and queued["status"] == "queued"
    assert before["run"]["status"] == "queued" and before["run"]["worker_id"] is None

    worker = serve_one(settings)

    run_id = queued["run_id"]
    with database.connect() as conn:
        status = rpc(conn, "select public.connector_status(%s)", run_id)["run"]
        latest = rpc(conn, "select public.connector_status(null, %s)", "paged")["run"]
        everything = rpc(conn, "select public.connector_logs(%s)", run_id)
        pages, after = [], 0
        while True:
            page = rpc(conn, "select public.connector_logs(%s, %s, %s)", run_id, after, 3)
            assert page["ok"] and page["run_id"] == run_id and page["status"] == "succeeded"
            if not page["logs"]:
                assert page["next_after"] == after, "an empty page must hand back the same position"
                break
            assert len(page["logs"]) <= 3 and page["next_after"] == page["logs"][-1]["id"]
            pages.append(page["logs"])
            after = page["next_after"]
        no_args = rpc(conn, "select public.connector_status()")
        bad_id = rpc(conn, "select public.connector_status(%s)", "not-a-run")
        fresh = rpc(conn, "select public.connector_run(%s)", "paged")
    assert status["status"] == "succeeded", status
    assert (status["run_id"], status["instance"], status["trigger"], status["attempt"]) == (run_id, "paged", "rpc", 1)
    assert status["worker_id"] == worker.id
    assert status["rows_by_stream"] == {"customers": 1000, "orders": 1000}
    assert status["rows_processed"] == 2000 and status["partitions_done"] == status["partitions_total"] == 2
    assert latest == status

    logs = everything["logs"]
    events = [e["event"] for e in logs]
    assert events[0] == "run.queued" and events[-1] == "run.succeeded" and "stream.planned" in events
    assert [e["id"] for e in logs] == sorted({e["id"] for e in logs})
    assert len(pages) >= 3 and all(len(p) == 3 for p in pages[:-1])
    assert [e for p in pages for e in p] == logs, "the pages do not add up to the whole log"

    assert no_args["error"]["code"] == "invalid_argument"
    assert bad_id["error"] == {"code": "not_found", "message": "no run 'not-a-run'", "details": {"run_id": "not-a-run"}}
    assert fresh["created"] is True and fresh["run_id"] != run_id, "a finished run must not block the next"


# -- tenancy: another tenant's instance or run looks missing --------------------------------------------


def _same_but_for(answer: dict[str, Any], made_up: dict[str, Any], real: str, fake: str) -> None:
    """`answer` (about something real of another tenant) must be `made_up` (about `fake`, which does not exist)
    once `fake` reads `real`: the same code, message and details, nothing more."""
    assert answer["ok"] is False and answer["error"]["code"] == "not_found", answer
    assert json.dumps(answer, sort_keys=True) == json.dumps(made_up, sort_keys=True).replace(fake, real)


def test_another_tenants_instance_and_run_get_the_answer_a_missing_one_gets(database, settings):
    migrated(database)
    user_a, user_b = str(uuid.uuid4()), str(uuid.uuid4())
    with database.connect() as conn:
        tenant_b = conn.execute("insert into ipai_tenants (name) values ('tenant_b') returning id::text").fetchone()[0]
        conn.execute("insert into ipai_tenant_members (tenant_id, user_id) values (%s, %s), (%s, %s)",
                     (LOCAL, user_a, tenant_b, user_b))
        instance = create(conn, tiny_spec("shop"))["instance_id"]
        run_id = rpc(conn, "select public.connector_run(%s)", "shop")["run_id"]
        runs_before = conn.execute("select count(*) from connector_runs").fetchone()[0]
    fake_id, fake_name = str(uuid.uuid4()), "nosuch"

    calls = {  # what B asks about A's things, and the same question about things that do not exist
        "run by id": ("select public.connector_run(%s)", instance, fake_id),
        "run by name": ("select public.connector_run(%s)", "shop", fake_name),
        "run by name and env": ("select public.connector_run(%s, 'dev', true)", "shop", fake_name),
        "status of a run": ("select public.connector_status(%s)", run_id, fake_id),
        "status of an instance": ("select public.connector_status(null, %s)", "shop", fake_name),
        "status by instance id": ("select public.connector_status(null, %s)", instance, fake_id),
        "logs of a run": ("select public.connector_logs(%s)", run_id, fake_id),
        "logs after an id": ("select public.connector_logs(%s, 1, 10)", run_id, fake_id),
    }
    with as_user(database, user_b) as b:
        for what, (sql, real, fake) in calls.items():
            answer, made_up = rpc(b, sql, real), rpc(b, sql, fake)
            assert made_up["ok"] is False, (what, made_up)
            _same_but_for(answer, made_up, real, fake)
        assert rpc(b, "select public.connector_list()") == {"ok": True, "instances": []}
        b.commit()
    with as_user(database, user_a) as a:  # the owner's user sees the same things: the refusals above are tenancy
        assert rpc(a, "select public.connector_status(%s)", run_id)["run"]["instance_id"] == instance
        assert rpc(a, "select public.connector_logs(%s)", run_id)["logs"][0]["event"] == "run.queued"
        again = rpc(a, "select public.connector_run(%s)", "shop")
        assert (again["run_id"], again["created"]) == (run_id, False)
        a.commit()
    with database.connect() as conn:
        assert conn.execute("select count(*) from connector_runs").fetchone()[0] == runs_before, \
            "another tenant's call queued a run"


# -- secrets ---------------------------------------------------------------------------------------------

TOKEN = "ghp_rpc_token_5d1c0a9e"


def test_a_missing_secret_fails_the_run_before_any_request_naming_it(database, settings, vault, monkeypatch):
    monkeypatch.setenv("IPAI_DEV_MODE", "1")  # the emulator speaks plain HTTP on loopback
    monkeypatch.setenv("IPAI_CREDENTIAL_IDLE_S", "5")
    migrated(database)
    with EmulatorProcess("github", "--token", TOKEN, "--repos", "1", "--issues-per-repo", "40") as gh:
        spec = {"name": "gh", "source_type": "github", "auth": {"type": "bearer", "token": {"secret": "github_token"}},
                "source": {"base_url": gh.url, "repos": ["acme/repo1"]}, "streams": [{"name": "issues"}]}
        with database.connect() as conn:
            create(conn, spec)
            run_id = rpc(conn, "select public.connector_run(%s)", "gh")["run_id"]
        worker = serve_one(settings)
        with database.connect() as conn:
            run = rpc(conn, "select public.connector_status(%s)", run_id)["run"]
            logs = rpc(conn, "select public.connector_logs(%s)", run_id)["logs"]
        assert run["status"] == "failed", run
        assert "secret 'github_token' is not set in the Vault" in run["error"], run["error"]
        assert "ipai secret set github_token" in run["error"]
        assert gh.log() == [], "a request went out before the secret was resolved"
        read = [e for e in logs if e["event"] == "secret.read"]
        assert [e["fields"] for e in read] == [{"secret": "github_token", "found": False, "worker": worker.id}]

        # The same run with the secret stored reaches the API (so the failure above was the missing secret).
        vault.set("github_token", TOKEN)
        with database.connect() as conn:
            retry = rpc(conn, "select public.connector_run(%s)", "gh")["run_id"]
        serve_one(settings)
        with database.connect() as conn:
            assert rpc(conn, "select public.connector_status(%s)", retry)["run"]["status"] == "succeeded"
        assert any(e["path"] == "/repos/acme/repo1/issues" and e["status"] == 200 for e in gh.log())


# -- the CLI --------------------------------------------------------------------------------------------


def test_cli_run_instances_and_secrets(tmp_path, settings, database, vault):
    migrated(database)
    env = env_for(settings)
    with database.connect() as conn:
        create(conn, tiny_spec("cli_shop"), schedule="15 4 * * *")
        create(conn, tiny_spec("cli_manual"))
        next_at = conn.execute("select ipai.cron_next('15 4 * * *', now())").fetchone()[0]

    listed = [json.loads(line) for line in ipai("instances", "--json", env=env).stdout.splitlines()]
    by_name = {r["name"]: r for r in listed}
    assert set(by_name) == {"cli_shop", "cli_manual"}
    assert by_name["cli_shop"]["schedule"] == "15 4 * * *" and by_name["cli_shop"]["type"] == "sample"
    assert by_name["cli_shop"]["next_run_at"] == str(next_at)
    assert by_name["cli_manual"]["next_run_at"] is None and by_name["cli_manual"]["last_status"] is None

    queued = ipai("run", "cli_shop", env=env).stdout.split()
    assert queued[0] == "run" and queued[2:] == ["queued", "for", "cli_shop"], queued
    run_id = queued[1]
    assert ipai("run", "cli_shop", env=env).stdout.split() == ["run", run_id, "already", "queued", "for", "cli_shop"]
    missing = ipai("run", "nosuch", env=env, check=False)
    assert missing.returncode == 1 and "not_found: no connector instance 'nosuch'" in missing.stderr
    assert "Traceback" not in missing.stderr

    with processes() as procs:
        # `ipai run --wait` on the queued run: it is handed that run, then waits for a worker to finish it.
        waiting = Proc("run_wait", ["run", "cli_shop", "--wait"], env, tmp_path)
        procs.append(waiting)
        wait_for("ipai run --wait to find the queued run", lambda: "already queued" in waiting.stdout,
                 alive=waiting.assert_running)
        worker = Proc("worker", worker_args(max_runs=1), worker_env(settings), tmp_path)
        procs.append(worker)
        assert waiting.popen.wait(timeout=WAIT_S) == 0, waiting.stdout + waiting.stderr
        assert worker.popen.wait(timeout=WAIT_S) == 0, worker.stderr  # --max-runs 1: it stops after that run
    assert waiting.stdout.splitlines() == [f"run {run_id} already queued for cli_shop",
                                           f"run {run_id} succeeded: 1,000 rows"], waiting.stdout
    assert [e["run_id"] for e in worker.events("run.claimed")] == [run_id]

    value = "s3cr3t-" + uuid.uuid4().hex
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "secret", "set", "api_key"], input=value + "\n",
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "secret api_key stored in the Vault"
    assert value not in proc.stdout + proc.stderr
    listed_secrets = ipai("secret", "list", env=env).stdout.splitlines()
    assert [line.split()[0] for line in listed_secrets] == ["api_key"]
    assert value not in "\n".join(listed_secrets)
    assert vault.get("api_key") == value  # stored for the local tenant, readable with the home's key
    with database.connect() as conn:
        [(sealed,)] = conn.execute("select secret from vault.secrets").fetchall()
    assert value not in sealed and sealed.split(":")[0] in ("pgp1", "hmac1")
