"""What the benchmarks share: running and measuring one side, reporting, and Postgres set-up.

A benchmark runs each side in a subprocess of its own (the script again, with `--child <side>`), which ends by
handing its figures back with `print_result`. The parent runs it with `run_measured`: `MemorySampler(pid)`
samples the summed PSS of that process, its descendants and any process of its Ray session, plus their CPU
time, and the machine's own counters give the rest of the machine's CPU; all of it comes back as a `Usage`.
`fresh_database` (or `database`) gives each run a database of its own on the server `admin_database` picked.
`print_and_write` prints a benchmark's table, note and verdicts and writes them to `benchmarks/results/`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the engine lives at the repo root

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SAMPLE_S = 0.2
PSS_REREAD_BYTES = 4 * 2**20
PSS_MAX_AGE_S = 2.0
POSTGRES_WRITERS = ("checkpointer", "walwriter", "background writer")
BUSY_SHARE = 0.15
"""A run during which the rest of the machine used more than this share of its CPU is marked busy."""
BUSY_WARNING = " -- WARNING: the machine was busy with other work; figures are unreliable"
RESULT = "RESULT "
"""What starts the line on which a side's subprocess hands back its figures (JSON)."""


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
    """Wait up to `seconds` for the machine to be idle (under 10% CPU over a second); return whether it is,
    saying so when it is not (the run goes ahead anyway)."""
    deadline = time.monotonic() + seconds
    while True:
        if psutil.cpu_percent(interval=1.0) < 10:
            return True
        if time.monotonic() >= deadline:
            print(f"the machine is still busy after {seconds:.0f} s; running anyway", flush=True)
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


# -- running and measuring one side ----------------------------------------------------------------


def bench_parser(doc: str) -> argparse.ArgumentParser:
    """Return an argument parser described by the first paragraph of a benchmark's docstring."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_database_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="admin URL of the Postgres to use (default: IPAI_DATABASE_URL,"
                        " else the local server, else an embedded one)")


def add_wait_idle(parser: argparse.ArgumentParser, *, before_each: str = "run") -> None:
    parser.add_argument("--wait-idle", type=float, default=60, help=f"seconds to wait, before each {before_each},"
                        " for the machine to be idle (other work makes the figures unreliable)")


def add_child_arguments(parser: argparse.ArgumentParser, sides: list[str] | tuple[str, ...]) -> None:
    """Add the hidden options with which a benchmark runs one side in its subprocess (see `child_command`)."""
    parser.add_argument("--child", choices=sides, help=argparse.SUPPRESS)
    parser.add_argument("--db-url", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)


def child_command(script: str, side: str, *args: str) -> list[str]:
    """The command line that runs one side of the benchmark `script` (its `__file__`) in a subprocess."""
    return [sys.executable, str(Path(script).resolve()), "--child", side, *args]


def child_env(**extra: str) -> dict[str, str]:
    """Our environment, less `RAY_ADDRESS` (the engine starts its own local Ray), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(extra)
    return env


def start_child(cmd: list[str], *, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start a side's subprocess at the repo root, its output piped."""
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def print_result(out: dict[str, Any]) -> None:
    """In a side's subprocess: hand its figures to the benchmark (`child_result` reads them)."""
    print(RESULT + json.dumps(out, default=str), flush=True)


def child_result(side: str, proc: subprocess.Popen[str], out: str, err: str) -> dict[str, Any]:
    """Return the figures a finished side printed; stop the benchmark with its error output if it failed."""
    line = next((ln for ln in out.splitlines() if ln.startswith(RESULT)), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"{side} run failed (exit {proc.returncode}):\n{err[-4000:]}")
    result: dict[str, Any] = json.loads(line[len(RESULT):])
    return result


@dataclass
class Usage:
    """What one side's subprocess used, as sampled (memory, CPU by process) and counted by the machine."""

    wall_seconds: float
    """From starting the subprocess to its end, the interpreter's start included."""
    peak_mib: float
    measure: str
    """What `peak_mib` sums: "pss", or "rss" where the kernel reports no PSS."""
    processes: int
    outside_tree: list[str]
    """Processes of the run's Ray session that were not descendants of the run's process."""
    breakdown: list[tuple[str, float]]
    """The processes at the peak, largest first (MiB)."""
    cpu_run: float
    """CPU seconds used by the run's processes."""
    cpu_postgres: float
    """CPU seconds used by the PostgreSQL backends serving the run's database and the server's writers."""
    cpu_other: float
    """CPU seconds the rest of the machine used meanwhile: a busy machine makes the figures unreliable."""
    cpu_sampler: float
    """CPU seconds this benchmark's own process (its sampling) used meanwhile."""
    cpu_by_process: list[tuple[str, float]]
    cpu_outside: float = 0.0
    """CPU seconds of the `outside` process given to `run_measured` (an emulator), if any."""

    @property
    def machine_busy(self) -> bool:
        return self.cpu_other > BUSY_SHARE * self.wall_seconds * (os.cpu_count() or 1)

    def peak(self, *, outside_tree: bool = False) -> str:
        """`peak N MiB over P processes`, and with `outside_tree` how many were found outside the tree."""
        text = f"peak {self.peak_mib:,.0f} MiB over {self.processes} processes"
        if outside_tree:
            names = f": {', '.join(self.outside_tree)}" if self.outside_tree else ""
            text += f" ({len(self.outside_tree)} found outside the process tree{names})"
        return text

    def at_peak(self, top: int = 6) -> str:
        """`at peak (MiB): ...`, the `top` largest processes."""
        return "at peak (MiB): " + ", ".join(f"{n} {v:,.0f}" for n, v in self.breakdown[:top])

    def cpu_seconds(self, *, outside: str | None = None, by_process: bool = True) -> str:
        """`CPU seconds: run ..., postgres ..., ...`, ending with a warning when the machine was busy.

        `outside`: what to call the `cpu_outside` process (listed after the run). `by_process`: add the eight
        processes of the run that used the most CPU.
        """
        text = f"CPU seconds: run {self.cpu_run:.1f}, "
        if outside:
            text += f"{outside} {self.cpu_outside:.1f}, "
        text += (f"postgres {self.cpu_postgres:.1f}, the benchmark's sampling {self.cpu_sampler:.1f},"
                 f" rest of the machine {self.cpu_other:.1f}")
        if by_process:
            text += "; by process: " + ", ".join(f"{n} {v:.1f}" for n, v in self.cpu_by_process[:8])
        return text + (BUSY_WARNING if self.machine_busy else "")


def _cpu_seconds(p: psutil.Process) -> float:
    return float(sum(p.cpu_times()[:2]))


def run_measured(side: str, cmd: list[str], *, env: dict[str, str] | None = None, database: str = "",
                 outside: psutil.Process | None = None) -> tuple[dict[str, Any], Usage]:
    """Run one side's subprocess to its end while sampling its process tree; return its figures and usage.

    `database`: the name shared by the databases the run uses, whose backends count as its Postgres CPU.
    `outside`: a process the side uses but did not start (an emulator): its CPU is counted apart, not as the
    rest of the machine's. Ray processes the run left behind are stopped.
    """
    outside0 = _cpu_seconds(outside) if outside else 0.0
    t0, cpu0, own0 = time.perf_counter(), busy_cpu(), _cpu_seconds(psutil.Process())
    proc = start_child(cmd, env=env)
    sampler = MemorySampler(proc.pid, database=database)
    sampler.start()
    out, err = proc.communicate()
    sampler.stop()
    wall, busy = time.perf_counter() - t0, busy_cpu() - cpu0
    own = _cpu_seconds(psutil.Process()) - own0
    cpu_outside = _cpu_seconds(outside) - outside0 if outside else 0.0
    reap(sampler)
    result = child_result(side, proc, out, err)
    cpu_run, cpu_pg = sum(sampler.cpu.values()), sum(sampler.postgres_cpu.values())
    usage = Usage(wall, sampler.peak_mib, sampler.measure, len(sampler.pids_seen), sorted(sampler.outside_names),
                  sampler.peak_breakdown, cpu_run, cpu_pg, max(0.0, busy - cpu_run - cpu_pg - cpu_outside - own), own,
                  cpu_by_label(sampler), cpu_outside)
    return result, usage


class _Run(Protocol):
    seconds: float
    usage: Usage


R = TypeVar("R", bound=_Run)


def fastest(kept: R, new: R, *, quiet_first: bool = False) -> R:
    """Of two runs of one side, return the faster (with `quiet_first`, a run the rest of the machine left
    alone before a busy one), given the higher peak memory of the two."""
    peak = max(new.usage.peak_mib, kept.usage.peak_mib)
    if quiet_first:
        best = new if (new.usage.machine_busy, new.seconds) < (kept.usage.machine_busy, kept.seconds) else kept
    else:
        best = new if new.seconds < kept.seconds else kept
    best.usage.peak_mib = peak
    return best


def sync_timed(text: str, *, db_url: str, settings: Any, warm: bool) -> tuple[Any, float]:
    """In a side's subprocess: run one sync of spec `text` with the engine and return its result and seconds.

    The engine starts a local Ray inside the clock; with `warm` it is started before the clock, as a
    long-lived Ray would be. Ray is shut down afterwards.
    """
    import ray

    from engine.controlplane.db import Database
    from engine.run.driver import run_sync
    from engine.run.raytime import ensure_ray
    from connectors.specload import parse_spec

    if warm:
        ensure_ray(None)
    t0 = time.perf_counter()
    result = run_sync(parse_spec(text), text, db=Database(db_url), settings=settings)
    seconds = time.perf_counter() - t0
    ray.shutdown()
    return result, seconds


def dlt_steps(pipeline: Any) -> dict[str, float]:
    """The seconds of each step of a dlt pipeline's last run (extract, normalize, load), from its trace."""
    trace = pipeline.last_trace
    if not trace:
        return {}
    return {s.step: round((s.finished_at - s.started_at).total_seconds(), 2) for s in trace.steps
            if s.finished_at is not None}


# -- Postgres ---------------------------------------------------------------------------------------


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
    from engine.controlplane.db import start_embedded

    db = start_embedded(Path(tempfile.mkdtemp(prefix="ipai-bench-pg-")) / "pgdata")
    return db.url, db


@contextmanager
def database(admin_url: str, name: str, *, create: bool = True, keep: bool = False,
             template: str | None = None) -> Iterator[str]:
    """Create database `name` (unless `create` is false) and yield its URL; drop it afterwards unless `keep`.

    `template`: make it a copy of that database, file by file (the default strategy, WAL_LOG, would write the
    whole copy to the WAL). A `CHECKPOINT` first (when allowed), so that one run does not pay for flushing
    the previous run's WAL.
    """
    import psycopg

    from engine.controlplane.db import with_database

    with psycopg.connect(admin_url, autocommit=True) as conn:
        if create:
            copy = f' template "{template}" strategy file_copy' if template else ""
            conn.execute(f'create database "{name}"{copy}')  # type: ignore[arg-type]
        try:
            conn.execute("checkpoint")
        except psycopg.Error:
            pass  # not a superuser: the runs may then share some checkpoint work
    try:
        yield with_database(admin_url, name)
    finally:
        if create and not keep:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'drop database if exists "{name}" with (force)')  # type: ignore[arg-type]


@contextmanager
def fresh_database(admin_url: str, *, prefix: str = "ipai_bench") -> Iterator[tuple[str, str]]:
    """Create an empty database for one run and yield (name, url); drop it afterwards (see `database`)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with database(admin_url, name) as url:
        yield name, url


def describe_server(admin_url: str, server: Any) -> str:
    """The Postgres a benchmark uses, for its header: the URL without its password, and whether it is embedded."""
    from engine.core.spec import redact_url

    return f"{redact_url(admin_url)}{' (embedded)' if server else ''}"


def delta_rows(path: Path) -> int:
    """Return the rows a Delta table holds, from the counts in its log (no data read)."""
    from deltalake import DeltaTable

    actions = DeltaTable(str(path)).get_add_actions(flatten=True)
    return sum(v or 0 for v in actions.column("num_records").to_pylist())


def verdict(ok: bool | None) -> str:
    return "SKIP" if ok is None else "PASS" if ok else "FAIL"


def measure_note(measures: set[str]) -> str:
    """Say what the peak memory sums, given the `Usage.measure` of every run."""
    if measures == {"pss"}:
        return "PSS (proportional set size: shared pages split between the processes mapping them)"
    return "RSS (PSS unavailable here; shared pages counted once per process)"


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


def print_and_write(name: str, *, intro: str, report: str, note: str, checks: list[tuple[bool | None, str]],
                    details: list[str], printed_note: str | None = None, minutes: float | None = None) -> Path:
    """Print the table, its note and the verdicts; write them with the details (`write_results`); print where.

    `printed_note`: a note for the terminal other than the file's. `minutes`: the invocation's length, said
    after the path.
    """
    print("\n" + report + "\n\n" + (note if printed_note is None else printed_note))
    for ok, text in checks:
        print(f"{verdict(ok)}  {text}")
    path = write_results(name, intro, report, note, checks, details)
    length = f" ({minutes:.1f} minutes in all)" if minutes is not None else ""
    print(f"\nwritten to {path.relative_to(ROOT)}{length}")
    return path
