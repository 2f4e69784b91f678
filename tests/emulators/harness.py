"""Start an emulator as a real process on loopback and drive its admin API from a test.

    with EmulatorProcess("github", "--issues-per-repo", "1000", "--token", "t") as gh:
        gh.set_faults(storm={"every": 5, "retry_after": 1})
        ...  # point the connector at gh.url
        assert gh.stats()["violations"] == 0
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 30.0


class EmulatorError(RuntimeError):
    """The emulator process did not start, or an admin call was refused."""


class EmulatorProcess:
    """One `python -m tests.emulators.<name>` process; `.url` is its base URL once started."""

    def __init__(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = [str(a) for a in args]
        self.env = env
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: Any = None
        self._admin: httpx.Client | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise EmulatorError(f"emulator {self.name} is not running")
        return self._proc.pid

    def start(self) -> EmulatorProcess:
        self._stderr = tempfile.TemporaryFile(mode="w+")
        cmd = [sys.executable, "-m", f"tests.emulators.{self.name}", "--port", "0", *self.args]
        self._proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
                                      env={**os.environ, **(self.env or {})})
        line = self._read_ready_line()
        if not line.startswith("READY "):
            try:
                self._proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
            detail = f"got {line.strip() or '<EOF>'!r}, exit code {self._proc.returncode}\n{self._stderr_text()}"
            self.stop()
            raise EmulatorError(f"emulator {self.name} did not start ({' '.join(cmd)}): {detail}")
        self.url = line.split(" ", 1)[1].strip()
        self._admin = httpx.Client(base_url=self.url, timeout=60.0)
        return self

    def _read_ready_line(self) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if sel.select(timeout=0.1):
                    return self._proc.stdout.readline()
                if self._proc.poll() is not None:
                    return f"<exited with code {self._proc.returncode}>"
        return f"<no READY line within {READY_TIMEOUT_S:.0f} s>"

    def _stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()[-8000:]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if the process has not gone within 5 s."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- admin API ---------------------------------------------------------------------------------------

    def admin(self, method: str, path: str, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        """Call an admin route and return its JSON; raise EmulatorError on a non-2xx answer."""
        if self._admin is None:
            raise EmulatorError(f"emulator {self.name} is not running")
        response = self._admin.request(method, path, json=json, params=params)
        if response.status_code >= 300:
            raise EmulatorError(f"{method} {path} -> {response.status_code}: {response.text}")
        return response.json()

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        """Merge these faults into the current ones (a value of None switches that fault off)."""
        return self.admin("POST", "/_emulator/faults", json=faults)

    def clear_faults(self) -> dict[str, Any]:
        return self.admin("DELETE", "/_emulator/faults")

    def log(self, since: int = 0) -> list[dict[str, Any]]:
        return self.admin("GET", "/_emulator/log", params={"since": since})["entries"]

    def clear_log(self) -> None:
        self.admin("DELETE", "/_emulator/log")

    def stats(self) -> dict[str, Any]:
        return self.admin("GET", "/_emulator/stats")
