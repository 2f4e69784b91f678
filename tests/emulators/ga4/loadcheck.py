"""Measure how many report rows per second one GA4 emulator process serves to a concurrent client.

    .venv/bin/python -m tests.emulators.ga4.loadcheck [--rows-per-day 120000] [--days 3] [--limit 10000]
        [--concurrency 4]

Starts the emulator through the harness, then pages through `--days` property-days at the finest grain
(date, pagePath, city, deviceCategory, sessionSource, country; seven metrics) with `--limit` rows a page:
"cold" includes computing each day's report on its first page, "warm" pages through the same days again
(reports cached). The client reads bodies without parsing them, so the table shows the server's rate.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import time

import aiohttp

from tests.emulators.harness import EmulatorProcess

TOKEN = "loadcheck-token"
PROPERTY = "123456789"
DIMENSIONS = ("date", "pagePath", "city", "deviceCategory", "sessionSource", "country")
METRICS = ("activeUsers", "sessions", "screenPageViews", "eventCount", "bounceRate", "averageSessionDuration",
           "totalRevenue")


def _body(day: str, offset: int, limit: int) -> dict[str, object]:
    return {"dateRanges": [{"startDate": day, "endDate": day}], "dimensions": [{"name": n} for n in DIMENSIONS],
            "metrics": [{"name": n} for n in METRICS], "offset": str(offset), "limit": str(limit)}


async def _page_through(url: str, days: list[str], *, limit: int, concurrency: int) -> tuple[float, int, int, int]:
    """Fetch every page of every day; return elapsed seconds, pages, rows and bytes received."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    pages = rows = received = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        async def fetch(day: str, offset: int) -> bytes:
            nonlocal pages, received
            async with session.post(f"{url}/v1beta/properties/{PROPERTY}:runReport",
                                    json=_body(day, offset, limit)) as response:
                body = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{day} offset {offset}: HTTP {response.status} {body[:200]!r}")
            pages += 1
            received += len(body)
            return body

        started = time.perf_counter()
        for day in days:
            first = await fetch(day, 0)  # rowCount sits near the end of the body
            total = int(first[first.rindex(b'"rowCount":') + 11:].split(b",", 1)[0])
            rows += total
            pending = iter(range(limit, total, limit))

            async def worker(day: str = day) -> None:
                for offset in pending:
                    await fetch(day, offset)
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, pages, rows, received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows-per-day", type=int, default=120_000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--limit", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    days = [(dt.date(2024, 1, 1) + dt.timedelta(days=i)).isoformat() for i in range(args.days)]
    with EmulatorProcess("ga4", "--token", TOKEN, "--properties", PROPERTY, "--today", "2024-12-31",
                         "--rows-per-day", str(args.rows_per_day)) as emulator:
        emulator.set_faults(ga4_quota={"concurrent_requests": args.concurrency + 1})
        table = []
        for label in ("cold", "warm"):
            elapsed, pages, rows, received = asyncio.run(_page_through(emulator.url, days, limit=args.limit,
                                                                       concurrency=args.concurrency))
            table.append((label, pages, rows, elapsed, received))
        stats = emulator.stats()
    print(f"GA4 emulator, {args.days} days x ~{args.rows_per_day:,} rows, {len(DIMENSIONS)} dimensions, "
          f"{len(METRICS)} metrics, limit={args.limit:,}, {args.concurrency} concurrent requests")
    print(f"{'pass':<6}{'pages':>7}{'rows':>10}{'seconds':>9}{'rows/s':>10}{'MB/s':>7}")
    for label, pages, rows, elapsed, received in table:
        print(f"{label:<6}{pages:>7}{rows:>10,}{elapsed:>9.2f}{rows / elapsed:>10,.0f}{received / elapsed / 1e6:>7.1f}")
    print(f"requests: {stats['requests']}, refused by quota: {stats['quota_refusals']}")


if __name__ == "__main__":
    main()
