"""Odoo (16+): accounting, sales and catalogue models, read from Odoo's own PostgreSQL or through its APIs.

Streams (one per model; a spec's `streams:` picks a subset): res_company, res_partner, product_template,
product_product, account_move, account_move_line, sale_order. Every stream has primary key `id` and
cursor `write_date`, and is cut into partitions by ranges of `id`.

`mode: postgres` reads the database by URL (a replica will do: nothing is written). Each model is a
query stream of the `database` source (connectors/database/stream.py), generated here from the table's columns,
so key ranges, cursor windows and types are that source's. What the query adds, per
../shared/api-contracts/odoo.md:
- translated fields are JSONB `{"en_US": ..., "fr_FR": ...}` (odoo.md s.9, Odoo 16+): `<field>` is the
  text in `lang`, else en_US (as the ORM falls back), and `<field>_translations` keeps the whole object
  as JSON text. Which JSONB columns are translations (others, e.g. `analytic_distribution`, are not) is
  `TRANSLATED` below, or `translated_fields:` in the spec;
- product_product has no name or company of its own (odoo.md s.9, `_inherits`): it is joined to its
  template, from which it takes `name` (translated) and its company;
- `companies: [1, 3]` keeps those companies' rows and the shared ones (`company_id` null): record rules
  live in the ORM, not in SQL (odoo.md s.9); res_company is filtered on `id`;
- datetimes are `timestamp without time zone` holding UTC (odoo.md s.9) and land as UTC timestamps;
  float and monetary columns are unconstrained `numeric` and land as decimal(38, 10).

Why a lookback (`lookback_s`, 10 minutes by default). An incremental run reads the window (lo, hi] of
write_date, hi being the largest write_date visible while planning, fixed for the whole extraction so
that a row written during the run is read by the next one instead of skipped. But Odoo stamps
write_date with the writing transaction's start time (`now() at time zone 'UTC'`, the cursor's `now()`),
not its commit time, and a row becomes visible only at commit. A transaction that began before hi and
commits after the plan (a long import, a cron job recomputing thousands of rows) adds rows at or below
hi, which no later window (> hi) would contain; so does a row sharing hi's exact value that commits a
moment later. So each run starts its window `lookback_s` before the stored cursor, which catches every
transaction shorter than that: set it above your longest one (Odoo's `limit_time_real_cron` for cron
jobs). A bound kept below the oldest running transaction (pg_stat_activity) would need privileges to see
other sessions and knows nothing of a replica's primary; the lookback needs neither. Its price: rows
changed within the lookback are read again by the next run (the same id and write_date; bronze consumers
keep the latest row per id). Deletions leave no trace in either mode (odoo.md s.6): a full sync finds them.

API modes (`jsonrpc`, `json2`): connectors/odoo/api.py (planning, paging, typing) and connectors/odoo/rpc.py
(calls, authentication, errors); the same lookback, on whole seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from connectors.database import DatabaseReader, DatabaseStream, SourceAccess, TableSpec
from connectors.database.dialects import Catalog, dialect_for
from connectors.httpkit import EgressPolicy
from connectors.odoo.api import OdooApiStream, OdooStreamShape
from connectors.odoo.spec import MODELS, OdooPostgresSource, OdooSpec
from engine.core.errors import ConfigError
from engine.core.protocol import Partition, Plan, PlanContext, ReadContext, Stream
from engine.core.spec import SecretRef, redact_url
from engine.core.sql import quote_ident

TRANSLATED: dict[str, tuple[str, ...]] = {
    "product_template": ("name", "description", "description_sale", "description_purchase", "description_picking",
                         "description_pickingin", "description_pickingout"),
    "res_company": ("report_header", "report_footer", "company_details"),
}
"""JSONB columns that hold translations (`translate=True` in Odoo 16+), where the table has them."""

ODOO_NUMERIC = "numeric(38, 10)"
"""Odoo's float and monetary columns are unconstrained numeric, rounded by the ORM to a few decimals."""


def streams(spec: OdooSpec) -> list[Stream]:
    """Return one stream per model, read as the spec's `mode` says."""
    s = spec.source
    if isinstance(s, OdooPostgresSource):
        return [OdooTableStream(spec.name, table, s) for table in MODELS]
    egress = EgressPolicy.from_environment()
    return [OdooApiStream(spec.name, table, m.name, m.company, s, egress) for table, m in MODELS.items()]


# -- mode: postgres --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OdooTableStream(OdooStreamShape):
    """One model read from Odoo's database as a query stream of the `database` source."""

    spec_name: str
    table: str
    source: OdooPostgresSource

    def _url(self, secrets: dict[str, str]) -> str:
        url = self.source.url
        return secrets[url.secret] if isinstance(url, SecretRef) else url

    def database_stream(self, cat: Catalog, url: str) -> DatabaseStream:
        """The query stream that reads this model, built from the table's columns as they are now."""
        table = TableSpec(query=model_query(cat, self.source, self.table, url), name=self.table,
                          cursor="write_date", primary_key=("id",), partition_on="id")
        return DatabaseStream(self.spec_name, self.source.url, table, self.source.partition_rows,
                              self.source.lookback_s)

    def plan(self, ctx: PlanContext) -> Plan:
        url = self._url(ctx.secrets)
        with dialect_for(url).catalog(url, SourceAccess.of(ctx.options)) as cat:
            inner = self.database_stream(cat, url)
        return inner.plan(ctx)

    def open(self, ctx: ReadContext) -> OdooTableReader:
        return OdooTableReader(self, self._url(ctx.secrets), SourceAccess.of(ctx.options))


class OdooTableReader:
    """Reads one id range of a model: the query is built again here (a resumed extraction is not planned)."""

    def __init__(self, stream: OdooTableStream, url: str, access: SourceAccess) -> None:
        self.stream, self.url, self.access = stream, url, access

    def read(self, partition: Partition) -> Iterator[pa.RecordBatch]:
        with dialect_for(self.url).catalog(self.url, self.access) as cat:
            inner = self.stream.database_stream(cat, self.url)
        for batch in DatabaseReader(inner, self.url, self.access).read(partition):
            yield _as_utc(batch)


def model_query(cat: Catalog, source: OdooPostgresSource, table: str, url: str) -> str:
    """The SELECT that reads one model: its columns (translations resolved), joins and company filter."""
    model, schema = MODELS[table], source.db_schema
    columns = _columns(cat, schema, table, url)
    translated = set(source.translated_fields.get(table, TRANSLATED.get(table, ())))
    select = [e for name, typ, mod in columns for e in _select(source.lang, "m", name, typ, mod, translated)]
    frm = f"{quote_ident(schema)}.{quote_ident(table)} m"
    company = "m.company_id"
    if model.company == "template":  # product.product `_inherits` product.template (odoo.md s.9)
        template = {name: typ for name, typ, _ in _columns(cat, schema, "product_template", url)}
        frm += f" join {quote_ident(schema)}.product_template t on t.id = m.product_tmpl_id"
        select += _select(source.lang, "t", "name", template.get("name", "varchar"), -1, {"name"})
        company = "t.company_id"
    where = ""
    if source.companies:
        ids = ", ".join(str(int(c)) for c in source.companies)
        where = (f" where m.id in ({ids})" if model.company == "id" else
                 f" where ({company} in ({ids}) or {company} is null)")  # null: shared by every company
    return f"select {', '.join(select)} from {frm}{where}"


def _columns(cat: Catalog, schema: str, table: str, url: str) -> list[tuple[str, str, int]]:
    rows = cat.all("select a.attname, ty.typname, a.atttypmod from pg_attribute a join pg_type ty"
                   " on ty.oid = a.atttypid where a.attrelid = to_regclass($1) and a.attnum > 0"
                   " and not a.attisdropped order by a.attnum", (f"{quote_ident(schema)}.{quote_ident(table)}",))
    if not rows:
        raise ConfigError(f"stream {table}: table {schema}.{table} does not exist in {redact_url(url)}; check that "
                          "this is Odoo's database and its `db_schema`, or leave the stream out (`streams:`) if "
                          "its app is not installed")
    return [(str(n), str(t), int(m)) for n, t, m in rows]


def _select(lang: str, alias: str, name: str, typ: str, typmod: int, translated: set[str]) -> list[str]:
    col, out = f"{alias}.{quote_ident(name)}", quote_ident(name)
    if typ == "jsonb" and name in translated:
        # odoo.md s.9: COALESCE(name->>'fr_FR', name->>'en_US'); `lang` matched LANG_PATTERN (no quotes).
        return [f"coalesce({col}->>'{lang}', {col}->>'en_US') as {out}",
                f"{col}::text as {quote_ident(name + '_translations')}"]
    if typ == "numeric" and typmod < 0:
        return [f"{col}::{ODOO_NUMERIC} as {out}"]
    return [f"{col} as {out}"]


def _as_utc(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Mark Odoo's naive timestamps as the UTC they hold (odoo.md s.9)."""
    if not any(pa.types.is_timestamp(f.type) and f.type.tz is None for f in batch.schema):
        return batch
    arrays: list[Any] = []
    for field, col in zip(batch.schema, batch.columns, strict=True):
        naive = pa.types.is_timestamp(field.type) and field.type.tz is None
        arrays.append(col.cast(pa.timestamp(field.type.unit, tz="UTC")) if naive else col)
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)
