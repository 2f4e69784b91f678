"""The Odoo source's spec models: the models (streams) it reads, and how it reaches Odoo (`mode`).

Values only (STYLE 3): `mode: postgres` is read by connectors/odoo/source.py, `jsonrpc` and `json2` by
connectors/odoo/api.py over connectors/odoo/rpc.py. Why a lookback (`lookback_s`): connectors/odoo/source.py's
docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from connectors.database import checked_url
from connectors.httpkit import RateLimit, RetryPolicy, checked_base_url
from engine.core.spec import ConnectorSpec, SecretRef, SpecModel

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
