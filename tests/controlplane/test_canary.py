"""RELIABILITY 18: a canary secret stored in the Vault never reaches a sink.

The canary is stored the way a user stores a token (`ipai secret set github_token`, value on stdin), the GitHub
emulator accepts only that token, and a worker subprocess runs two github instances queued with `ipai run`: one
that succeeds through a storm of 403s with Retry-After (retry paths), one that fails on a 404 (error paths).
Then every sink is searched for the canary and its encodings (URL-quoted, base64 at any alignment):
the worker's stdout and stderr, the CLI's output, every text/json/bytea column of every table in every schema of
the test database (vault.secrets must hold ciphertext only), every file of the Delta tables (log JSON and
parquet, raw bytes and decoded values), every file under IPAI_HOME except vault.key, and the Ray session's logs.
Each search first proves it can see: it must find a known non-secret string in the same sink.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import ray

from layers.addressing import Address
from tests.emulators.harness import EmulatorProcess
from tests.emulators.requestlog import credential_id
from tests.support.canary import Sinks, forms
from tests.support.cli import Proc, env_for, ipai, processes, worker_args, worker_env
from tests.support.databases import migrated
from tests.support.rpc import create, rpc
from tests.support.waiting import wait_for

pytestmark = pytest.mark.usefixtures("ray_cluster")

REPOS = ["acme/repo1", "acme/repo2"]


def test_a_canary_secret_never_reaches_any_sink(tmp_path, settings, database):
    canary = f"ghp_canary_{uuid.uuid4().hex}"
    migrated(database)
    env = env_for(settings)
    stored = subprocess.run([sys.executable, "-m", "engine.cli", "secret", "set", "github_token"],
                            input=canary + "\n", env=env, capture_output=True, text=True, timeout=60)
    assert stored.returncode == 0, stored.stderr
    wenv = {**worker_env(settings), "IPAI_DEV_MODE": "1", "IPAI_CREDENTIAL_IDLE_S": "5"}
    outputs: dict[str, str] = {"secret set": stored.stdout + stored.stderr}

    with EmulatorProcess("github", "--token", canary, "--repos", "2", "--issues-per-repo", "250",
                         "--commits-per-repo", "40") as gh, processes() as procs:
        def spec(name: str, repos: list[str], streams: list[str]) -> dict[str, Any]:
            return {"name": name, "source_type": "github",
                    "auth": {"type": "bearer", "token": {"secret": "github_token"}},
                    "source": {"base_url": gh.url, "repos": repos, "pages_per_partition": 2, "lookback_s": 0,
                               "rate_limit": {"requests_per_second": 200, "burst": 20}},
                    "streams": [{"name": s} for s in streams]}

        with database.connect() as conn:
            create(conn, spec("gh_ok", REPOS, ["repositories", "issues", "commits"]))
            create(conn, spec("gh_bad", ["acme/repo1", "acme/nope"], ["issues"]))
        gh.set_faults(storm={"every": 6, "status": 403, "retry_after": 1, "count": 2})
        worker = Proc("worker", worker_args(), wenv, tmp_path)
        procs.append(worker)
        runs = {}
        for name in ("gh_ok", "gh_bad"):
            queued = ipai("run", name, env=env)
            outputs[f"ipai run {name}"] = queued.stdout + queued.stderr
            runs[name] = queued.stdout.split()[1]
        with database.connect() as conn:
            wait_for("both runs to end", lambda: conn.execute(
                "select count(*) = 0 from connector_runs where status in ('queued', 'running')").fetchone()[0],
                alive=worker.assert_running)
            status = {n: rpc(conn, "select public.connector_status(%s)", r)["run"] for n, r in runs.items()}
        assert worker.stop() == 0, worker.stderr
        stats, log = gh.stats(), gh.log()

    assert status["gh_ok"]["status"] == "succeeded", status["gh_ok"]
    assert status["gh_bad"]["status"] == "failed" and "/repos/acme/nope/issues" in status["gh_bad"]["error"]
    assert "404" in status["gh_bad"]["error"]
    assert stats["by_note"].get("storm", 0) == 2, stats  # the retry path ran
    assert stats["by_status"].get("401", 0) == 0, stats
    assert {e["credential"] for e in log if e["path"].startswith("/repos/")} == {credential_id(canary)}, \
        "every request must have carried the canary, read from the Vault"
    outputs["worker stdout"], outputs["worker stderr"] = worker.stdout, worker.stderr
    assert [e["run_id"] for e in worker.events("run.claimed")] == [runs["gh_ok"], runs["gh_bad"]]

    home, lakehouse = settings.home, Path(settings.lakehouse_uri)
    node = ray._private.worker._global_node  # the session's Ray, started by this process
    assert node is not None
    ray_logs = Path(node.get_session_dir_path()) / "logs"
    gh_ok = Address("local", "dev", "gh_ok")  # its spec leaves env at the default, dev
    issues = (gh_ok.schema("bronze"), gh_ok.bronze_table("issues"))
    sinks = Sinks(database.url, outputs, tables={("vault", "secrets"), ("public", "connector_run_logs"),
                                                 ("public", "connector_runs"), issues})
    secret_forms = forms(canary)
    assert len(secret_forms) >= 4 and canary.encode() in secret_forms

    # Every search sees its sink: known strings that are not secret are found where they must be.
    assert any("connector_run_logs" in h for h in sinks.database([b"github_token"])), "the search missed the logs"
    assert any(".".join(issues) in h for h in sinks.database([b"acme/repo2"])), "the search missed bronze"
    probe = b"probe-" + canary[::-1].encode()  # no bytea column holds data yet: a probe row proves that search
    with database.connect() as conn:
        conn.execute("create table public.grep_probe (b bytea)")
        conn.execute("insert into public.grep_probe values (%s)", (b"\x00" + probe + b"\x01",))
    assert sinks.database([probe]) == [f"public.grep_probe.b ({probe!r})"]
    delta_hits = sinks.files(lakehouse, [b"acme/repo1"])
    assert any("_delta_log" in h and ".json " in h for h in delta_hits), "the search missed the Delta log"
    assert any(".parquet" in h for h in sinks.files(lakehouse, [b"acme/repo2"])), "the search missed parquet"
    assert sinks.outputs([runs["gh_bad"].encode()]), "the search missed the worker's output"
    assert any("vault.key" in h for h in sinks.files(home, [Path(home, "vault.key").read_bytes()[:16]]))
    assert any("raylet" in h for h in sinks.files(ray_logs, [b"raylet"])), "the search missed Ray's logs"

    # The canary, in every form, nowhere.
    assert sinks.outputs(secret_forms) == []
    assert sinks.database(secret_forms) == []
    assert sinks.files(lakehouse, secret_forms) == []
    assert sinks.files(home, secret_forms, skip=("vault.key",)) == []
    assert sinks.files(ray_logs, secret_forms) == []

    # vault.secrets holds ciphertext only, and it is the canary's (the key opens it).
    with psycopg.connect(database.url, autocommit=True) as conn:
        [(name, sealed)] = conn.execute("select name, secret from vault.secrets").fetchall()
        key = Path(home, "vault.key").read_text().strip()
        conn.execute("select set_config('ipai.vault_key', %s, false)", (key,))
        [(opened,)] = conn.execute("select decrypted_secret from vault.decrypted_secrets").fetchall()
    assert name == "ipai/00000000-0000-0000-0000-000000000001/github_token"
    assert sealed.split(":")[0] in ("pgp1", "hmac1") and opened == canary
