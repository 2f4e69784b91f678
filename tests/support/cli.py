"""The `ipai` CLI run as a user runs it: a real process with its own environment.

    ipai(...)    one command to completion (output captured)
    Proc         a long-lived command (a worker, a scheduler) in its own process group, output in files
    processes()  collects the Procs a test starts and kills what is left of them when it ends
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray

from engine.controlplane.settings import Settings
from tests.support.waiting import WAIT_S

CLI = [sys.executable, "-m", "engine.cli"]


def base_env(*, drop: tuple[str, ...] = ("IPAI_", "RAY_ADDRESS")) -> dict[str, str]:
    """This process's environment without the variables starting with `drop`, which a test sets itself."""
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def env_for(settings: Settings, *, database: bool = True) -> dict[str, str]:
    """The environment of an `ipai` process on the test's home, lakehouse, database (unless `database` is
    false) and the session's Ray."""
    env = base_env()
    env.update(IPAI_HOME=str(settings.home), IPAI_LAKEHOUSE_URI=settings.lakehouse_uri,
               RAY_ADDRESS=ray.get_runtime_context().gcs_address)
    if database:
        env["IPAI_DATABASE_URL"] = settings.database_url
    return env


def ipai(*args: str, env: dict[str, str], check: bool = True,
         timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run `ipai ARGS` to completion; with `check`, fail the test unless it exited 0."""
    proc = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


class Proc:
    """An `ipai` subprocess in its own process group, its output in files under `folder`."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], folder: Path) -> None:
        self.name = name
        self.stdout_path, self.stderr_path = folder / f"{name}.stdout", folder / f"{name}.stderr"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen([*CLI, *args], env=env,
                                          stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON lines the process printed (workers and schedulers print one per event)."""
        out = []
        for line in self.stdout.splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if name is None or record.get("event") == name:
                    out.append(record)
        return out

    def running(self) -> bool:
        return self.popen.poll() is None

    def assert_running(self) -> None:
        assert self.running(), f"{self.name} exited with {self.popen.returncode}:\n{self.stdout}\n{self.stderr}"

    def signal(self, sig: int) -> None:
        """Send `sig` to the process group (only while its leader, our child, is still there)."""
        if self.running():
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = WAIT_S) -> int:
        """SIGTERM and wait for the exit; return the exit code."""
        self.signal(signal.SIGTERM)
        return self.popen.wait(timeout=timeout)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait(timeout=30)


@contextmanager
def processes() -> Iterator[list[Proc]]:
    """Collects the processes a test starts and kills whatever is left of them when it ends."""
    started: list[Proc] = []
    try:
        yield started
    finally:
        for proc in started:
            try:
                proc.kill()
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass


def worker_args(*, lease: float = 30, poll: float = 0.5, **more: Any) -> list[str]:
    """The arguments of `ipai worker` with these options (`max_runs=1` becomes `--max-runs 1`)."""
    args = ["worker", "--lease", str(lease), "--poll", str(poll)]
    for k, v in more.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def worker_env(settings: Settings) -> dict[str, str]:
    """What a worker subprocess gets: the test database, home, lakehouse and the shared Ray (never a default
    address: 6379 belongs to Redis)."""
    env = env_for(settings)
    assert env["RAY_ADDRESS"] and not env["RAY_ADDRESS"].endswith(":6379")
    return env
