"""What the benchmarks share: the memory and CPU sampler over a run's process tree, and Postgres set-up.

A benchmark runs each side in a subprocess of its own and measures it with `MemorySampler(pid)`: the
summed PSS of that process, its descendants and any process of its Ray session, plus their CPU time.
`fresh_database` gives each run a database of its own on the server `admin_database` picked.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the engine lives at the repo root

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SAMPLE_S = 0.2
PSS_REREAD_BYTES = 4 * 2**20
PSS_MAX_AGE_S = 2.0
POSTGRES_WRITERS = ("checkpointer", "walwriter", "background writer")


@dataclass
class MemorySampler:
    """Samples the summed memory of a process, its descendants and its Ray session's processes.

    Reading a process's PSS makes the kernel walk its page tables (a few ms for a Ray worker), so a
    process's PSS is read again only when its RSS (cheap to read) moved by `PSS_REREAD_BYTES` or its last
    reading is `PSS_MAX_AGE_S` old; that keeps the sampling's own CPU low on a 2-core machine.
    """

    root: int
    database: str = ""
    """Name of the run's database: its PostgreSQL backends count towards CPU, not memory."""
    peak_mib: float = 0.0
    peak_breakdown: list[tuple[str, float]] = field(default_factory=list)
    measure: str = "pss"
    sessions: set[str] = field(default_factory=set)
    """Ray session folders named on the command lines of the run's processes."""
    outside_tree: set[int] = field(default_factory=set)
    pids_seen: set[int] = field(default_factory=set)
    outside_names: set[str] = field(default_factory=set)
    cpu: dict[int, float] = field(default_factory=dict)
    """CPU seconds of each process of the run, as last seen."""
    postgres_cpu: dict[int, float] = field(default_factory=dict)
    labels: dict[int, str] = field(default_factory=dict)
    """What each process of the run was (the first task a Ray worker ran, if any)."""
    samples: int = 0
    _postgres_base: dict[int, float] = field(default_factory=dict)
    _pss: dict[int, tuple[float, int, float]] = field(default_factory=dict)  # pid -> (pss, rss then, when)
    _scanned: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        if self.database:
            self.sample_postgres()  # the server's writers' CPU time so far, not the run's
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self.database:
            self.sample_postgres()  # the backends' final CPU time

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_S)

    def processes(self) -> list[psutil.Process]:
        """Return the root, its descendants, and any process naming a Ray session folder they use."""
        try:
            root = psutil.Process(self.root)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        for p in procs:
            if p.pid in self._scanned:
                continue
            try:
                self.sessions.update(d for arg in p.cmdline() for d in session_dirs(arg))
                self._scanned.add(p.pid)
            except psutil.Error:
                continue
        if self.sessions and self.samples % 10 == 0:  # every 2 s: listing every process costs the run CPU
            known = {p.pid for p in procs}
            for p in psutil.process_iter(["pid", "cmdline"]):
                cmd = " ".join(p.info["cmdline"] or [])
                if p.pid not in known and any(s in cmd for s in self.sessions):
                    procs.append(p)
                    try:
                        if self.root not in {a.pid for a in p.parents()}:  # not a child started since the listing
                            self.outside_tree.add(p.pid)
                            self.outside_names.add(label(p))
                    except psutil.Error:
                        pass
        return procs

    def sample_postgres(self) -> None:
        """Record the CPU time of the PostgreSQL backends serving the run's database and of the server's
        writers (checkpointer, WAL and background writers), which mostly write what the run loaded."""
        for p in psutil.process_iter(["pid", "name", "cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if not (p.info["name"] or "").startswith("postgres"):
                continue
            ours, writer = self.database in cmd, any(w in cmd for w in POSTGRES_WRITERS)
            if ours or writer:
                try:
                    t = p.cpu_times()
                except psutil.Error:
                    continue
                if p.pid not in self._postgres_base:  # a writer ran before the run: count from now on
                    self._postgres_base[p.pid] = 0.0 if ours else t.user + t.system
                self.postgres_cpu[p.pid] = t.user + t.system - self._postgres_base[p.pid]

    def sample(self) -> None:
        total = 0.0
        breakdown: list[tuple[str, float]] = []
        for p in self.processes():
            try:
                t = p.cpu_times()
                self.cpu[p.pid] = t.user + t.system
                name = self.labels.get(p.pid, "")
                if not name.startswith("ray::") or name == "ray::IDLE":  # until a worker shows its first task
                    name = self.labels[p.pid] = label(p)
                value = self._memory(p)
            except psutil.Error:
                continue  # a process that ended between listing and reading
            self.pids_seen.add(p.pid)
            total += value
            breakdown.append((name, value / 2**20))
        if self.database and self.samples % 5 == 0:
            self.sample_postgres()
        self.samples += 1
        if total / 2**20 > self.peak_mib:
            self.peak_mib = total / 2**20
            self.peak_breakdown = sorted(breakdown, key=lambda x: -x[1])

    def _memory(self, p: psutil.Process) -> float:
        rss = p.memory_info().rss
        now = time.monotonic()
        last = self._pss.get(p.pid)
        if last and abs(rss - last[1]) < PSS_REREAD_BYTES and now - last[2] < PSS_MAX_AGE_S:
            return last[0]
        mem = p.memory_full_info()
        value = getattr(mem, "pss", None)
        if value is None:
            self.measure, value = "rss", mem.rss
        self._pss[p.pid] = (value, rss, now)
        return float(value)


SESSION_DIR = re.compile(r"/[^\s=,]*?/session_[^/\s,]+")


def session_dirs(arg: str) -> list[str]:
    """Return the Ray session folders (`/tmp/ray/session_<name>`) a command-line argument names."""
    return SESSION_DIR.findall(arg)


def label(p: psutil.Process) -> str:
    cmd = p.cmdline()
    name = p.name()
    if name.startswith("ray::") or (cmd and cmd[0].startswith("ray::")):
        title = cmd[0] if cmd else name
        if title.startswith("ray::read "):
            return "ray::read worker"
        if "BronzeWriter" in title or title.startswith(("ray::write ", "ray::bronze ")):
            return "ray::BronzeWriter"
        return title
    if "python" in name and len(cmd) > 1:
        script = next((Path(a).name for a in cmd[1:] if a.endswith(".py")), cmd[1])
        return f"python {script}"
    return name


def cpu_by_label(sampler: MemorySampler) -> list[tuple[str, float]]:
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    for pid, seconds in sampler.cpu.items():
        name = sampler.labels.get(pid, "?")
        totals[name] = totals.get(name, 0.0) + seconds
        counts[name] = counts.get(name, 0) + 1
    return sorted(((f"{k} x{counts[k]}" if counts[k] > 1 else k, v) for k, v in totals.items()), key=lambda x: -x[1])


def wait_idle(seconds: float) -> bool:
    """Wait up to `seconds` for the machine to be idle (under 10% CPU over a second); return whether it is."""
    deadline = time.monotonic() + seconds
    while True:
        if psutil.cpu_percent(interval=1.0) < 10:
            return True
        if time.monotonic() >= deadline:
            return False


def busy_cpu() -> float:
    """Return the CPU seconds the whole machine has spent busy since boot."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def reap(sampler: MemorySampler) -> None:
    """Stop Ray processes of the run that outlived it (started by the run, so ours to end), by pid."""
    for pid in sampler.pids_seen - {sampler.root}:
        try:
            p = psutil.Process(pid)
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                p.terminate()
        except psutil.Error:
            pass


def admin_database(explicit: str | None) -> tuple[str, Any]:
    """Return a maintenance-database URL (and an embedded server to keep alive, if one was started)."""
    import psycopg

    url = explicit or os.environ.get("IPAI_DATABASE_URL")
    if url:
        return url, None
    try:
        psycopg.connect(DEFAULT_SERVER_URL, connect_timeout=2).close()
        return DEFAULT_SERVER_URL, None
    except psycopg.OperationalError:
        pass
    from engine.db import start_embedded

    db = start_embedded(Path(tempfile.mkdtemp(prefix="ipai-bench-pg-")) / "pgdata")
    return db.url, db


@contextmanager
def fresh_database(admin_url: str, *, prefix: str = "ipai_bench") -> Iterator[tuple[str, str]]:
    """Create an empty database for one run and yield (name, url); drop it afterwards.

    A `CHECKPOINT` first (when allowed), so that one run does not pay for flushing the previous run's WAL.
    """
    import psycopg

    from engine.db import with_database

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
        try:
            conn.execute("checkpoint")
        except psycopg.Error:
            pass  # not a superuser: the runs may then share some checkpoint work
    try:
        yield name, with_database(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


def verdict(ok: bool | None) -> str:
    return "SKIP" if ok is None else "PASS" if ok else "FAIL"


def write_results(name: str, intro: str, report: str, note: str, checks: list[tuple[bool | None, str]],
                  details: list[str]) -> Path:
    """Write one invocation's results to `benchmarks/results/<name>-<timestamp>.md`; return the path."""
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.now()
    path = out_dir / f"{name}-{now.strftime('%Y%m%d-%H%M%S')}.md"
    path.write_text(
        f"# {name}, {now.isoformat(timespec='seconds')}\n\n{intro}\n\n{report}\n\n{note}\n\n"
        + "\n".join(f"- {verdict(ok)}: {t}" for ok, t in checks)
        + "\n\nDetails:\n\n" + "\n".join(f"- {d}" for d in details) + "\n",
        encoding="utf-8",
    )
    return path
