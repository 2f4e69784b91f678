"""Local `ipai worker` processes that serve a pipeline's runs on a laptop, started as its steps need them.

A pipeline queues its connector runs like every other entry point; workers execute them. With no worker
fleet running, `ipai pipeline run` starts one local worker per connector step running at the same time and
stops them at the end. They share one Ray: the configured address, else a local Ray this process starts, so
two workers on a small machine do not each start a Ray of their own. Each worker exits on its own after
`idle_exit_s` without work, so a pipeline process that dies leaves none behind for long.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine.controlplane.settings import Settings
from engine.core.errors import IpaiError
from engine.core.private import open_private, private_dir

IDLE_EXIT_S = 60.0
STOP_WAIT_S = 60.0


class LocalWorkers:
    """Worker subprocesses for one pipeline run; their output goes to `log_dir`."""

    def __init__(self, settings: Settings, database_url: str, *, log_dir: Path, max_workers: int | None = None,
                 idle_exit_s: float = IDLE_EXIT_S) -> None:
        self.settings, self.database_url, self.log_dir = settings, database_url, log_dir
        self.max_workers, self.idle_exit_s = max_workers, idle_exit_s
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        self._ray_address: str | None = None

    def ensure(self, wanted: int) -> None:
        """Have at least `wanted` workers alive (at most `max_workers`); raise when one died of an error."""
        self.check()
        if self.max_workers is not None:
            wanted = min(wanted, self.max_workers)
        alive = sum(1 for p, _ in self.procs if p.poll() is None)
        for _ in range(wanted - alive):
            self._start()

    def check(self) -> None:
        """Raise IpaiError naming the log when a worker exited with an error (it could not start, say)."""
        for proc, log in self.procs:
            code = proc.poll()
            if code not in (None, 0):
                lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
                last = lines[-1] if lines else "no output"
                raise IpaiError(f"a local worker exited with code {code}: {last} (its log: {log})")

    def stop(self) -> None:
        """Ask every worker to stop (each finishes the run it holds), then kill what is left after a minute."""
        for proc, _ in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
        for proc, _ in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                # Its run's lease lapses and the run is retried by the next worker from what it committed.
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def _start(self) -> None:
        private_dir(self.log_dir)
        log = self.log_dir / f"worker-{len(self.procs) + 1}.log"
        cmd = [sys.executable, "-m", "engine.cli", "worker", "--idle-exit", str(self.idle_exit_s), "--poll", "0.5"]
        with open_private(log) as out:
            # A session of its own: Ctrl-C on the pipeline reaches only the pipeline, which stops workers in order.
            proc = subprocess.Popen(cmd, env=self._env(), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True)
        self.procs.append((proc, log))

    def _env(self) -> dict[str, str]:
        s = self.settings
        env = {k: v for k, v in os.environ.items()
               if k not in ("IPAI_DATABASE_URL", "IPAI_WORKER_DATABASE_URL", "IPAI_LAKEHOUSE_URI", "RAY_ADDRESS")}
        env.update(IPAI_HOME=str(s.home), IPAI_LAKEHOUSE_URI=s.lakehouse_uri, RAY_ADDRESS=self.ray_address())
        # Through the environment, never on a command line (`ps` shows those). The URL is the pipeline's own (the
        # embedded server's too, which this process keeps running); workers connect from it as ipai_worker, as
        # every worker does, unless IPAI_WORKER_DATABASE_URL says otherwise.
        env["IPAI_DATABASE_URL"] = self.database_url
        if s.worker_database_url:
            env["IPAI_WORKER_DATABASE_URL"] = s.worker_database_url
        return env

    def ray_address(self) -> str:
        if self._ray_address is None:
            if self.settings.ray_address:
                self._ray_address = self.settings.ray_address
            else:
                import ray

                from engine.run.raytime import ensure_ray

                ensure_ray(None)
                self._ray_address = str(ray.get_runtime_context().gcs_address)
        return self._ray_address
