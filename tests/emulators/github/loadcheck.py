"""Measure how many issue pages per second one GitHub emulator process serves to a concurrent client.

    .venv/bin/python -m tests.emulators.github.loadcheck [--issues-per-repo 1000000] [--pages 4000] [--concurrency 16]

Starts the emulator through the harness, then `--concurrency` aiohttp requests at a time fetch
`/repos/acme/repoN/issues?state=all&per_page=100&page=K` for distinct K (every page rendered for the first
time: "cold"), then the last pages again (served from the page cache: "warm"), and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp

from tests.emulators.harness import EmulatorProcess

TOKEN = "loadcheck-token"


async def _hammer(url: str, targets: list[tuple[int, int]], *, concurrency: int, sort: str) -> tuple[float, int]:
    """Fetch every (repo, page) in `targets`; return elapsed seconds and bytes received."""
    pending = iter(targets)
    received = 0
    headers = {"Authorization": f"Bearer {TOKEN}", "User-Agent": "loadcheck"}

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal received
        for repo, page in pending:
            params = {"state": "all", "per_page": "100", "page": str(page), "sort": sort}
            async with session.get(f"{url}/repos/acme/repo{repo}/issues", params=params) as response:
                body = await response.read()
                if response.status != 200 or len(body) < 1000:
                    raise RuntimeError(f"page {page} of repo{repo}: HTTP {response.status}, {len(body)} bytes")
                received += len(body)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return time.perf_counter() - started, received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repos", type=int, default=1)
    parser.add_argument("--issues-per-repo", type=int, default=1_000_000)
    parser.add_argument("--pages", type=int, default=4000, help="distinct pages in the cold pass")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sort", choices=("created", "updated"), default="created")
    args = parser.parse_args()
    pages_per_repo = -(-args.issues_per_repo // 100)
    targets = [(1 + i % args.repos, 1 + (i // args.repos) % pages_per_repo) for i in range(args.pages)]
    with EmulatorProcess("github", "--token", TOKEN, "--repos", str(args.repos),
                         "--issues-per-repo", str(args.issues_per_repo)) as emulator:
        # One request per repository first, so the one-off column build is not timed.
        asyncio.run(_hammer(emulator.url, [(r, 1) for r in range(1, args.repos + 1)], concurrency=1,
                            sort=args.sort))
        rows = []
        for label, batch in (("cold", targets), ("warm", targets[-400:] * 5)):
            elapsed, received = asyncio.run(_hammer(emulator.url, batch, concurrency=args.concurrency,
                                                    sort=args.sort))
            rows.append((label, len(batch), elapsed, len(batch) / elapsed, received / elapsed / 1e6))
        violations = emulator.stats()["violations"]
    print(f"GitHub emulator, {args.repos} x {args.issues_per_repo:,} issues, sort={args.sort}, "
          f"{args.concurrency} concurrent requests, per_page=100")
    print(f"{'pass':<6}{'pages':>8}{'seconds':>10}{'pages/s':>10}{'issues/s':>11}{'MB/s':>8}")
    for label, pages, elapsed, rate, mbps in rows:
        print(f"{label:<6}{pages:>8}{elapsed:>10.2f}{rate:>10.0f}{rate * 100:>11.0f}{mbps:>8.1f}")
    print(f"violations: {violations}")


if __name__ == "__main__":
    main()
