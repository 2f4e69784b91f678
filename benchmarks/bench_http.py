"""HTTP throughput: the engine's GitHub connector against dlt's `rest_api` on the same GitHub emulator.

    python benchmarks/bench_http.py                               # 1,000,000 issues; 0 and 100 ms a page
    python benchmarks/bench_http.py --issues 50000 --peer-issues 5000 --peer-issues-latency 2000

For each latency of `--latency-list`, one GitHub emulator process (`tests/emulators/github/server.py`) serves
`--repos` repositories of `--issues / --repos` issues each (about one in five a pull request); it adds
that latency to every request. Then, one after the other (never at once: the machine has two cores),
each side runs in a subprocess of its own, whose process tree is measured (the emulator is not):

  dlt rest_api   dlt's `rest_api` source (header_link paginator, bearer auth, a filter dropping pull
                 requests, `max_table_nesting=0`) into a fresh Postgres database, `write_disposition`
                 append. dlt is slow, so it reads a smaller share: `--peer-issues` issues with no added
                 latency, `--peer-issues-latency` with latency (whole repositories from repo1 on, the
                 last one cut to its first pages with `add_limit`).
  engine         `engine.run.driver.run_sync` on a `github` spec reading the `issues` stream of every
                 repository (full sync), starting its own local Ray, into a fresh database (bronze
                 Postgres) and a fresh lakehouse folder (bronze Delta).

`--warm-ray` adds a third run: the engine with Ray started before its clock. `--paced` keeps the
connector's pacing (15 requests/s per credential, GitHub's secondary limit), which the spec otherwise
lifts. After each run the rows landed are counted (outside the timing) and checked against the non-PR
issues the emulator served (its truth route). Rows/s are compared; the targets are the engine at
>= 15x dlt's rows/s with no added latency and >= 30x with 100 ms a page. The table is printed and
written to `benchmarks/results/bench_http-<timestamp>.md`.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the engine lives at the repo root

from benchmarks.common import (  # noqa: E402 - needs the repo root on sys.path
    SAMPLE_S, Usage, add_child_arguments, add_database_url, add_wait_idle, admin_database, bench_parser,
    child_command, child_env, delta_rows, describe_server, dlt_steps, fresh_database, measure_note, print_and_write,
    print_result, run_measured, sync_timed, wait_idle,
)
from layers.addressing import Address  # noqa: E402

TOKEN = "bench-http-token"
PER_PAGE = 100
ORG = "acme"
PEER = "dlt rest_api"
ENGINE = "engine"
WARM = "engine, Ray up"
"""The optional third run: the engine with Ray started before its clock, as a long-lived cluster would be."""
TARGETS = {0: 15.0, 100: 30.0}
"""Latency per page (ms) -> the engine's rows/s, at least this many times dlt's."""
SPEC_TEMPLATE = """\
name: gh_bench
env: prod
source_type: github
sync_mode: full
auth: {{type: bearer, token: {{secret: github_token}}}}
source:
  base_url: {url}
  repos: [{repos}]
  per_page: {per_page}
  pages_per_partition: {pages_per_partition}
  concurrency: {concurrency}
{pacing}streams: [{{name: issues}}]
"""
UNPACED = "  rate_limit: {requests_per_second: null}\n"
"""The connector paces itself to GitHub's secondary limit (15 requests/s per credential) by default. The
emulator does not enforce that limit and dlt does not pace, so the benchmark lifts it unless `--paced`."""
INSTANCE = Address("local", "prod", "gh_bench")
"""The engine's instance (the spec says `env: prod`): its bronze table is `bronze.raw_gh_bench_issues`."""
ENGINE_SCHEMA, ENGINE_TABLE = INSTANCE.schema("bronze"), INSTANCE.bronze_table("issues")
PEER_DATASET = "peer"


# -- what is read -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Share:
    """The repositories one side reads: whole ones, and maybe the first `pages` pages of one more."""

    repos: tuple[str, ...]
    pages: int | None = None
    """Pages read of the last repository (None: all of them)."""

    @classmethod
    def of(cls, issues: int, *, per_repo: int, repos: int) -> Share:
        whole, rest = divmod(min(issues, per_repo * repos), per_repo)
        names = tuple(f"{ORG}/repo{i + 1}" for i in range(whole + (1 if rest else 0)))
        return cls(names, math.ceil(rest / PER_PAGE) if rest else None)

    def issues(self, per_repo: int) -> int:
        """Issues served to this share (pull requests included)."""
        cut = min(per_repo, self.pages * PER_PAGE) if self.pages is not None else per_repo
        return per_repo * (len(self.repos) - 1) + cut if self.repos else 0

    def describe(self, per_repo: int) -> str:
        if self.pages is None:
            return f"{len(self.repos)} repo{'s' if len(self.repos) > 1 else ''} x {per_repo:,}"
        whole = len(self.repos) - 1
        return (f"{whole} x {per_repo:,} + " if whole else "") + f"{self.pages:,} pages of 1 repo"

    def expected_rows(self, truth: dict[str, list[bool]]) -> int:
        """Non-PR issues among what this share reads, per the emulator's truth (number order = created asc)."""
        rows = 0
        for i, repo in enumerate(self.repos):
            flags = truth[repo]
            if i == len(self.repos) - 1 and self.pages is not None:
                flags = flags[: self.pages * PER_PAGE]
            rows += sum(1 for is_pr in flags if not is_pr)
        return rows


def run_engine(url: str, share: Share, db_url: str, work: Path, *, pages_per_partition: int, concurrency: int,
               paced: bool, warm: bool) -> dict[str, Any]:
    """Sync the `issues` stream of `share` with the engine, on a local Ray it starts itself (before the
    clock starts when `warm`)."""
    from engine.controlplane.settings import Settings
    from engine.controlplane.db import Database
    from engine.controlplane.vault import set_secret

    text = SPEC_TEMPLATE.format(url=url, repos=", ".join(share.repos), per_page=PER_PAGE,
                                pages_per_partition=pages_per_partition, concurrency=concurrency,
                                pacing="" if paced else UNPACED)
    settings = Settings(home=work / "home", database_url=db_url, lakehouse_uri=str(work / "lakehouse"),
                        ray_address=None)
    set_secret(Database(db_url), settings.home, "github_token", TOKEN)
    result, seconds = sync_timed(text, db_url=db_url, settings=settings, warm=warm)
    return {"rows": result.rows, "seconds": seconds, "partitions": result.partitions}


def run_peer(url: str, share: Share, db_url: str, work: Path) -> dict[str, Any]:
    """Load `share` with dlt's `rest_api` source into Postgres, one resource per repository."""
    import dlt
    from dlt.sources.rest_api import rest_api_source

    t0 = time.perf_counter()
    config: Any = {
        "client": {
            "base_url": url,
            "auth": {"type": "bearer", "token": TOKEN},
            "headers": {"Accept": "application/vnd.github+json"},
            "paginator": {"type": "header_link"},
        },
        "resource_defaults": {
            "write_disposition": "append",
            "table_name": "issues",
            "endpoint": {"params": {"state": "all", "sort": "created", "direction": "asc", "per_page": PER_PAGE}},
            # Pull requests are listed among issues; the engine's connector drops them too.
            "processing_steps": [{"filter": lambda item: "pull_request" not in item}],
        },
        "resources": [{"name": _resource(repo), "endpoint": {"path": f"repos/{repo}/issues"}} for repo in share.repos],
    }
    source = rest_api_source(config, name="github", max_table_nesting=0)
    if share.pages is not None:
        source.resources[_resource(share.repos[-1])].add_limit(share.pages)  # counts pages, not rows
    pipeline = dlt.pipeline(pipeline_name="bench_http", pipelines_dir=str(work / "dlt"),
                            destination=dlt.destinations.postgres(credentials=_dlt_credentials(db_url)),
                            dataset_name=PEER_DATASET)
    pipeline.run(source)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "steps": dlt_steps(pipeline)}


def _resource(repo: str) -> str:
    return "issues_" + repo.replace("/", "_")


def _dlt_credentials(db_url: str) -> str:
    """dlt's Postgres credentials require a password; a trust-auth server ignores the one given here."""
    parts = urlsplit(db_url)
    if parts.password is None and "@" in parts.netloc:
        user, _, host = parts.netloc.rpartition("@")
        parts = parts._replace(netloc=f"{user}:unused@{host}")
    return urlunsplit(parts)


def child_main(args: argparse.Namespace) -> None:
    share = Share(tuple(args.share_repos.split(",")), args.share_pages)
    work = Path(args.work)
    if args.child == PEER:
        out = run_peer(args.url, share, args.db_url, work)
    else:
        out = run_engine(args.url, share, args.db_url, work, pages_per_partition=args.pages_per_partition,
                         concurrency=args.concurrency, paced=args.paced, warm=args.child == WARM)
    print_result(out)


# -- measuring --------------------------------------------------------------------------------------


@dataclass
class Measured:
    run: str
    latency_ms: int
    workload: str
    issues: int
    """Issues the emulator served to this run's share (pull requests included)."""
    expected: int
    """Non-PR issues among them: what should land."""
    rows: int
    seconds: float
    requests: int
    delta_rows: int | None
    postgres_rows: int
    steps: dict[str, float]
    """The run's own timings: the engine's `connector_runs.timings`, dlt's trace steps."""
    usage: Usage
    """Its `cpu_outside` is the emulator's."""

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds


@dataclass(frozen=True)
class Bench:
    """One emulator (one latency) and what both sides are to read from it."""

    emulator: Any
    latency_ms: int
    per_repo: int
    truth: dict[str, list[bool]]
    admin_url: str
    pages_per_partition: int
    concurrency: int
    paced: bool


def measure(run: str, share: Share, bench: Bench) -> Measured:
    """Run one side in a subprocess against a fresh database and work folder; drop both afterwards."""
    emulator = psutil.Process(bench.emulator.pid)
    work = Path(tempfile.mkdtemp(prefix=f"ipai-bench-http-{run.replace(', ', '-').replace(' ', '-')}-"))
    env = child_env(IPAI_DEV_MODE="1",  # plain http to the loopback emulator
                    RUNTIME__DLTHUB_TELEMETRY="false")
    try:
        with fresh_database(bench.admin_url, prefix="ipai_bench_http") as (name, db_url):
            cmd = child_command(__file__, run, "--url", bench.emulator.url, "--share-repos", ",".join(share.repos),
                                "--db-url", db_url, "--work", str(work), "--pages-per-partition",
                                str(bench.pages_per_partition), "--concurrency", str(bench.concurrency))
            if bench.paced:
                cmd.append("--paced")
            if share.pages is not None:
                cmd += ["--share-pages", str(share.pages)]
            requests0 = bench.emulator.stats()["requests"]
            result, usage = run_measured(run, cmd, env=env, database=name, outside=emulator)
            requests = bench.emulator.stats()["requests"] - requests0
            delta, pg_rows, steps = _count(run, work, db_url)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Measured(
        run, bench.latency_ms, share.describe(bench.per_repo), share.issues(bench.per_repo),
        share.expected_rows(bench.truth), result.get("rows", pg_rows), result["seconds"], requests, delta, pg_rows,
        {**result.get("steps", {}), **steps}, usage,
    )


def _count(run: str, work: Path, db_url: str) -> tuple[int | None, int, dict[str, float]]:
    """Return the rows in Delta (engine only) and in Postgres, and the engine run's stored timings."""
    import psycopg

    if run == PEER:
        with psycopg.connect(db_url) as conn:
            row = conn.execute(f'select count(*) from "{PEER_DATASET}"."issues"').fetchone()
        return None, row[0] if row else 0, {}
    delta = delta_rows(work / "lakehouse" / ENGINE_SCHEMA / ENGINE_TABLE)
    with psycopg.connect(db_url) as conn:
        row = conn.execute(f'select count(*) from "{ENGINE_SCHEMA}"."{ENGINE_TABLE}"').fetchone()
        timings = conn.execute("select timings from connector_runs order by started_at desc limit 1").fetchone()
    return delta, row[0] if row else 0, dict(timings[0] or {}) if timings else {}


def truth(emulator: Any, repos: int) -> dict[str, list[bool]]:
    """Each repository's `pull_request` flags in number order (which is created-ascending order).

    Asking also builds and caches the emulator's issue selections, before either side's clock starts.
    """
    out = {}
    for i in range(repos):
        repo = f"{ORG}/repo{i + 1}"
        out[repo] = emulator.admin("GET", "/_emulator/github/truth", params={"repo": repo, "state": "all"})[
            "pull_request"]
    return out


# -- reporting --------------------------------------------------------------------------------------


def table(group: list[Measured]) -> str:
    peer = next((m for m in group if m.run == PEER), None)
    lines = [f"**{group[0].latency_ms} ms per page**", "",
             "| side | read (repos x issues) | issues served | rows landed | seconds | rows/s | requests/s"
             " | peak memory (MiB) | CPU µs per row | rows/s vs peer |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in group:
        ratio = f"{m.rows_per_second / peer.rows_per_second:.1f}x" if peer else "-"
        busy = " (busy machine)" if m.usage.machine_busy else ""
        cpu = f"{m.usage.cpu_run / m.rows * 1e6:,.0f}" if m.rows else "-"
        lines.append(f"| {m.run}{busy} | {m.workload} | {m.issues:,} | {m.rows:,} | {m.seconds:.1f}"
                     f" | {m.rows_per_second:,.0f} | {m.requests_per_second:,.0f} | {m.usage.peak_mib:,.0f} | {cpu}"
                     f" | {ratio} |")
    return "\n".join(lines)


def verdicts(group: list[Measured]) -> list[tuple[bool | None, str]]:
    """Check the speed target of this latency on the engine runs, and every run's row count."""
    out: list[tuple[bool | None, str]] = []
    peer = next((m for m in group if m.run == PEER), None)
    latency = group[0].latency_ms
    target = TARGETS.get(latency)
    for m in group:
        if m.run == PEER:
            continue
        what = "engine (starting its own Ray)" if m.run == ENGINE else "engine with Ray up"
        if peer is None or target is None:
            why = "no peer run" if peer is None else "no target at this latency"
            out.append((None, f"{latency} ms: {what}: speed not checked ({why})"))
            continue
        ratio = m.rows_per_second / peer.rows_per_second
        out.append((ratio >= target, f"{latency} ms: {what} at {ratio:.1f}x dlt's rows/s"
                    f" ({m.rows_per_second:,.0f} vs {peer.rows_per_second:,.0f}; target >= {target:.0f}x)"))
    for m in group:
        landed = [m.rows, m.postgres_rows] + ([m.delta_rows] if m.delta_rows is not None else [])
        where = f"Postgres {m.postgres_rows:,}" + (f", Delta {m.delta_rows:,}" if m.delta_rows is not None else "")
        out.append((all(n == m.expected for n in landed), f"{latency} ms: {m.run} landed {m.rows:,} rows ({where});"
                    f" the emulator served {m.expected:,} non-PR issues"))
    return out


def _detail(m: Measured) -> str:
    u = m.usage
    steps = ", ".join(f"{k} {v}" for k, v in m.steps.items())
    return (f"{m.latency_ms} ms, {m.run}: {m.rows:,} rows in {m.seconds:.1f} s ({u.wall_seconds:.1f} s with process"
            f" start), {m.requests:,} requests; own timings: {steps or '-'}; {u.peak()}; {u.at_peak()};"
            f" {u.cpu_seconds(outside='emulator')}")


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--issues", type=int, default=1_000_000, help="issues the engine reads, PRs included"
                        " (spread over --repos repositories)")
    parser.add_argument("--repos", type=int, default=10, help="repositories the emulator serves")
    parser.add_argument("--peer-issues", type=int, default=100_000, help="issues dlt reads with no added latency")
    parser.add_argument("--peer-issues-latency", type=int, default=20_000, help="issues dlt reads with latency")
    parser.add_argument("--latency-list", default="0,100", help="ms added to every request, one emulator each")
    parser.add_argument("--pages-per-partition", type=int, default=50, help="the spec's pages_per_partition")
    parser.add_argument("--concurrency", type=int, default=16, help="the spec's concurrency (pages in flight"
                        " per read task)")
    parser.add_argument("--paced", action="store_true", help="keep the connector's own pacing (GitHub's secondary"
                        " limit, 15 requests/s per credential); by default the benchmark's spec lifts it")
    parser.add_argument("--only", choices=["engine", "peer"], help="run one side only (no ratio checks)")
    parser.add_argument("--warm-ray", action="store_true", help="also run the engine with Ray started before"
                        " its clock (a long-lived cluster); checked against the target too")
    add_wait_idle(parser)
    add_database_url(parser)
    add_child_arguments(parser, [PEER, ENGINE, WARM])
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--share-repos", help=argparse.SUPPRESS)
    parser.add_argument("--share-pages", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return

    from tests.emulators.harness import EmulatorProcess

    latencies = [int(x) for x in args.latency_list.split(",")]
    per_repo = math.ceil(args.issues / args.repos)
    admin, server = admin_database(args.database_url)
    runs = [r for r in (PEER, ENGINE, WARM if args.warm_ray else None)
            if r and (not args.only or (r == PEER) == (args.only == "peer"))]
    pacing = "paced by the connector" if args.paced else "rate_limit lifted (unpaced)"
    header = (f"GitHub emulator: {args.repos} repos x {per_repo:,} issues (about 1 in 5 a pull request), {PER_PAGE}"
              f" per page; engine spec: pages_per_partition {args.pages_per_partition}, concurrency"
              f" {args.concurrency}, {pacing}; postgres: {describe_server(admin, server)};"
              f" cpus: {os.cpu_count()}")
    print(header, flush=True)
    started = time.perf_counter()
    reports: list[str] = []
    checks: list[tuple[bool | None, str]] = []
    details: list[str] = []
    measures: set[str] = set()
    for latency in latencies:
        peer_issues = args.peer_issues_latency if latency else args.peer_issues
        shares = {PEER: Share.of(peer_issues, per_repo=per_repo, repos=args.repos),
                  ENGINE: Share.of(args.issues, per_repo=per_repo, repos=args.repos)}
        with EmulatorProcess("github", "--repos", str(args.repos), "--issues-per-repo", str(per_repo),
                             "--org", ORG, "--token", TOKEN) as gh:
            if latency:
                gh.set_faults(latency_ms=latency)
            bench = Bench(gh, latency, per_repo, truth(gh, args.repos), admin, args.pages_per_partition,
                          args.concurrency, args.paced)
            group: list[Measured] = []
            for run in runs:
                wait_idle(args.wait_idle)
                m = measure(run, shares[PEER if run == PEER else ENGINE], bench)
                measures.add(m.usage.measure)
                details.append(_detail(m))
                print(details[-1], flush=True)
                group.append(m)
        reports.append(table(group))
        checks += verdicts(group)
    memory = measure_note(measures)
    minutes = (time.perf_counter() - started) / 60
    print_and_write(
        "bench_http", intro=f"{header}; {minutes:.1f} minutes in all.", report="\n\n".join(reports),
        note="Rows: non-PR issues landed. Requests/s: the emulator's request count during the run over its seconds."
        f" Memory: {memory}, sampled every {SAMPLE_S} s over the side's process tree; the emulator and the"
        " PostgreSQL server are left out.",
        printed_note="rows: non-PR issues landed (dlt in Postgres; the engine in bronze Delta and Postgres)."
        f" requests/s: the emulator's request count during the run over its seconds. memory: {memory}, sampled"
        f" every {SAMPLE_S} s over the side's process tree; the emulator and the PostgreSQL server are left out.",
        checks=checks, details=details, minutes=minutes)
    if server is not None:
        del server


if __name__ == "__main__":
    main()
