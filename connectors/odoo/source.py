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
from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from connectors.database.stream import DatabaseReader, DatabaseStream, TableSpec, checked_url
from connectors.database.dialects import Catalog, dialect_for
from connectors.httpkit.components import RateLimit, RetryPolicy, checked_base_url
from connectors.httpkit.egress import EgressPolicy
from connectors.odoo.api import OdooApiStream, OdooStreamShape
from engine.core.errors import ConfigError
from engine.core.protocol import Partition, Plan, PlanContext, ReadContext, Stream
from engine.core.spec import ConnectorSpec, SecretRef, SpecModel, redact_url
from engine.core.sql import quote_ident

CompanyRule = Literal["company_id", "template", "id"]


@dataclass(frozen=True)
class OdooModel:
    """A model this connector reads, and how its rows belong to companies."""

    name: str
    company: CompanyRule
    """`company_id` (null = shared), `template` (through product_tmpl_id), or `id` (res.company itself)."""

    @property
    def table(self) -> str:
        return self.name.replace(".", "_")  # odoo.md s.9


MODELS: dict[str, OdooModel] = {m.table: m for m in (
    OdooModel("res.company", "id"), OdooModel("res.partner", "company_id"),
    OdooModel("product.template", "company_id"), OdooModel("product.product", "template"),
    OdooModel("account.move", "company_id"), OdooModel("account.move.line", "company_id"),
    OdooModel("sale.order", "company_id"),
)}
"""The streams, by table name."""

TRANSLATED: dict[str, tuple[str, ...]] = {
    "product_template": ("name", "description", "description_sale", "description_purchase", "description_picking",
                         "description_pickingin", "description_pickingout"),
    "res_company": ("report_header", "report_footer", "company_details"),
}
"""JSONB columns that hold translations (`translate=True` in Odoo 16+), where the table has them."""

ODOO_NUMERIC = "numeric(38, 10)"
"""Odoo's float and monetary columns are unconstrained numeric, rounded by the ORM to a few decimals."""
LANG_PATTERN = r"^[a-z]{2,3}(_[A-Z]{2})?(@[a-z]+)?$"


class OdooCommon(SpecModel):
    """What both kinds of access share."""

    companies: tuple[int, ...] = ()
    """Read only these companies' rows, and rows shared between companies (no company set); empty: all."""
    lang: str = Field(default="en_US", pattern=LANG_PATTERN)
    """Language of translated fields (`fr_FR` ...); a missing translation falls back to en_US."""
    partition_rows: int = Field(default=200_000, ge=10)
    """About how many rows one partition (one Ray task) reads."""
    lookback_s: int = Field(default=600, ge=0)
    """Seconds re-read before the stored cursor: rows written by transactions still running while the last
    run was planned (write_date is a transaction's start time; see the module docstring)."""


class OdooPostgresSource(OdooCommon):
    """Odoo's PostgreSQL database, read directly (a read-only user and a replica will do)."""

    mode: Literal["postgres"]
    url: str | SecretRef
    """`postgresql://user@host:port/odoo_db`; a URL with a password must be a secret reference."""
    db_schema: str = Field(default="public", pattern=r"^[A-Za-z_][A-Za-z0-9_$]*$")
    """Schema of Odoo's tables."""
    translated_fields: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    """Per stream, its JSONB columns that are translations, instead of the defaults (e.g. for a custom
    `x_` field): `{product_template: [name, description_sale, x_label]}`."""

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: str | SecretRef) -> str | SecretRef:
        return checked_url(value, ("postgresql://", "postgres://"), "Odoo runs on PostgreSQL: use a postgresql:// URL")

    @field_validator("translated_fields")
    @classmethod
    def _known_streams(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        return _known(value)


class OdooApiSource(OdooCommon):
    """An Odoo server reached over its external API: JSON-RPC (all versions up to 19) or JSON-2 (19+)."""

    mode: Literal["jsonrpc", "json2"]
    base_url: str
    """`https://mycompany.odoo.com`; plain `http://` only to loopback in dev mode (IPAI_DEV_MODE=1)."""
    database: str = Field(min_length=1)
    """The Odoo database name."""
    login: str | None = None
    """The user's login (jsonrpc)."""
    password: SecretRef | None = None
    """The user's password (jsonrpc); an API key is better."""
    api_key: SecretRef | None = None
    """An API key (Preferences > Account Security): jsonrpc takes it in place of the password, json2 needs it."""
    session: bool = False
    """jsonrpc only: log in as the browser does (/web/session/authenticate, then /web/dataset/call_kw with the
    session cookie) instead of stateless execute_kw. Needs the password: Odoo refuses API keys for sessions."""
    fields: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    """Per stream, the fields to read; default: every stored field but binaries and one2many."""
    page_size: int = Field(default=500, ge=1, le=10_000)
    """Records per search_read call."""
    rate_limit: RateLimit = RateLimit(requests_per_second=10.0, remaining_header=None, reset_header=None)
    """Odoo has no rate limiter of its own (odoo.md s.7), but its workers are few: a gentle default pace."""
    retry: RetryPolicy = RetryPolicy()

    @field_validator("base_url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        return checked_base_url(value)

    @field_validator("fields")
    @classmethod
    def _known_streams(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        return _known(value)

    @model_validator(mode="after")
    def _credentials(self) -> OdooApiSource:
        if self.mode == "json2":
            if self.api_key is None:
                raise ValueError("mode json2 authenticates with `api_key:` (a bearer key)")
            if self.session:
                raise ValueError("`session:` is for mode jsonrpc")
        elif self.login is None or (self.password is None and self.api_key is None):
            raise ValueError("mode jsonrpc needs `login:` and `password:` or `api_key:`")
        elif self.session and self.password is None:
            raise ValueError("a web session (`session: true`) logs in with `password:`; Odoo takes API keys "
                             "only for stateless calls")
        return self


def _known(value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    unknown = sorted(set(value) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown stream {', '.join(unknown)}; the streams are: {', '.join(MODELS)}")
    return value


class OdooSpec(ConnectorSpec):
    """A spec reading Odoo."""

    source_type: Literal["odoo"]
    source: Annotated[OdooPostgresSource | OdooApiSource, Field(discriminator="mode")]


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
        with dialect_for(url).catalog(url) as cat:
            inner = self.database_stream(cat, url)
        return inner.plan(ctx)

    def open(self, ctx: ReadContext) -> OdooTableReader:
        return OdooTableReader(self, self._url(ctx.secrets))


class OdooTableReader:
    """Reads one id range of a model: the query is built again here (a resumed extraction is not planned)."""

    def __init__(self, stream: OdooTableStream, url: str) -> None:
        self.stream, self.url = stream, url

    def read(self, partition: Partition) -> Iterator[pa.RecordBatch]:
        with dialect_for(self.url).catalog(self.url) as cat:
            inner = self.stream.database_stream(cat, self.url)
        for batch in DatabaseReader(inner, self.url).read(partition):
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
