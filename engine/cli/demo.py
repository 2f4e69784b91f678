"""`ipai demo`: sync the sample shop twice (full, then incremental) and show where the data landed."""

from __future__ import annotations

from typing import Annotated

import typer

from engine.cli.common import DatabaseOpt, LakehouseOpt, control_plane, out, resolve_settings
from engine.cli.db import print_query
from engine.cli.submit import execute


def demo(
    rows: Annotated[int, typer.Option(help="About how many rows the sample shop has in all.")] = 1_000_000,
    database_url: DatabaseOpt = None,
    lakehouse: LakehouseOpt = None,
) -> None:
    """Sync the sample shop twice (full, then incremental a few days later) and show where the data landed."""
    from connectors.specload import parse_spec
    from engine.run.driver import RunOptions, prepare_run
    from layers.addressing import Address

    settings = resolve_settings(database_url, lakehouse)
    orders = max(1_000, rows * 10 // 36)  # ~0.1 customers and ~2.5 lines per order
    with control_plane(settings) as db:
        for day, title in ((25, "first sync: the shop as of day 25 (everything is new)"),
                           (30, "second sync: five days later, only new and changed rows")):
            text = _demo_spec(orders, day)
            spec = parse_spec(text, filename="<demo>")
            out.rule(title)
            options = RunOptions(trigger="demo")
            instance_id, run_id = prepare_run(spec, text, db=db, options=options)
            execute(spec, db, settings, options, instance_id, run_id, show=True)
        where = Address(settings.tenant, spec.env, spec.name)  # bronze_dev.raw_demo_shop_orders ...
        peek = ("select status, count(*) as orders, sum(amount) as amount from "
                f"{where.schema('bronze')}.{where.bronze_table('orders')}"
                f" where _ipai_run_id = '{run_id}' group by status order by 2 desc")
        latest = ("select status, count(*) as orders, sum(amount) as amount from "
                  f"{where.schema('silver')}.{where.silver_table('orders')}"
                  " where not _ipai_deleted group by status order by 2 desc")
        for title, query in (("what the second sync brought: orders by status (ipai sql)", peek),
                             ("silver: every order once, as it is now (ipai sql)", latest)):
            out.rule(title)
            out.print(query, highlight=False, soft_wrap=True)
            with db.connect() as conn:
                print_query(conn, query, limit=10)
    out.print(f"lakehouse: {settings.lakehouse_uri}   control plane: {db.display_url}", highlight=False)
    if db.embedded_pgdata:
        out.print("the embedded PostgreSQL runs while an ipai command does; query it with `ipai sql`")
    out.print("next: `ipai runs`, `ipai state show demo_shop`, `ipai logs RUN_ID`, `ipai sql \"select ...\"`")


def _demo_spec(orders: int, today: int) -> str:
    return (
        "name: demo_shop\nsource_type: sample\nsync_mode: incremental\nlayers: [bronze, silver]\n"
        f"source:\n  seed: 7\n  days: 30\n  today: {today}\n  customers: {max(100, orders // 10)}\n"
        f"  orders: {orders}\n  partition_rows: 250000\n"
    )
