"""A long-lived local Ray head for one IPAI home: started once, reused by every later command.

Starting Ray takes about 5 s on a small machine, and its dashboard lives only as long as Ray does.
`ipai ray start` runs a head in the background with a temp folder of its own (named after the home), so it
can be found (`ray.json`) and stopped (only its own processes) without touching other Ray clusters on
the machine. Settings pick it up as the default Ray address.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil

from engine.controlplane.settings import LocalHead
from engine.core.errors import ConfigError
from engine.core.private import private_dir, private_temp_dir


def head_processes(head: LocalHead) -> list[psutil.Process]:
    """Return the processes of `head` (those naming its temp folder or, like the Ray client server, its
    GCS address), not of other clusters."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(head.temp_dir in arg or arg.endswith(head.address) for arg in p.info["cmdline"] or ()):
                found.append(p)
        except psutil.Error:
            continue
    # The raylet's agents (ray::DashboardAgent, ray::RuntimeEnvAgent) rename themselves: found as children.
    for p in list(found):
        try:
            found.extend(c for c in p.children(recursive=True) if c not in found)
        except psutil.Error:
            continue
    return found



def start(home: Path, *, dashboard_port: int = 8265, num_cpus: int | None = None) -> LocalHead:
    """Start the local head for `home` unless one is running; return it."""
    current = LocalHead.read(home)
    if current is not None and current.alive():
        return current
    # Ray puts Unix sockets under its temp folder, and their paths may not pass 107 bytes: a short
    # folder per home, not one inside it.
    temp_dir = private_temp_dir(f"ray-{hashlib.sha1(str(home).encode()).hexdigest()[:10]}")  # owner-only around it
    private_dir(home)
    port, agent_port, client_port = _free_port(), _free_port(), _free_port()
    ray_cli = Path(sys.executable).with_name("ray")
    cmd = [str(ray_cli if ray_cli.exists() else shutil.which("ray") or "ray"), "start", "--head",
           f"--port={port}", f"--temp-dir={temp_dir}", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dashboard_port}", "--disable-usage-stats",
           # Ray's fixed defaults (52365, 10001) collide with any other Ray on the machine; a head whose
           # dashboard agent cannot listen refuses every job ("No available agent").
           f"--dashboard-agent-listen-port={agent_port}", f"--ray-client-server-port={client_port}",
           f"--num-cpus={num_cpus or os.cpu_count() or 1}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ConfigError(f"could not start a local Ray head: {' | '.join(tail)}")
    head = LocalHead(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}", str(temp_dir))
    (home / "ray.json").write_text(json.dumps(head.__dict__), encoding="utf-8")
    return head


def stop(home: Path) -> int:
    """Stop the local head of `home` (its processes only); return how many processes were stopped."""
    head = LocalHead.read(home)
    if head is None:
        return 0
    procs = head_processes(head)
    # The GCS last: a raylet (and its agents) shuts down gracefully by telling the GCS, and waits for it when
    # the GCS is going too (all at once, they outlived SIGTERM for over 10 s; in this order it takes ~4 s).
    gcs = [p for p in procs if _name(p) == "gcs_server"]
    for group in ([p for p in procs if p not in gcs], gcs):
        for p in group:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(group, timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
    (home / "ray.json").unlink(missing_ok=True)
    return len(procs)


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return ""


def _free_port() -> int:
    # The GCS default is 6379, which Redis often holds: always ask the OS for a free port instead.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

