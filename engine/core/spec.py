"""Connector spec models: what a data engineer writes in `specs/<name>.yaml`.

A spec is validated data (STYLE 6). Every connector module defines a subclass of `ConnectorSpec`
whose `source_type` is a `Literal` and whose `source` field is that connector's own config model;
`connectors.AnySpec` is the discriminated union of them, and `specs/schema.json` is generated from it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import Annotated, Literal
from urllib.parse import urlsplit

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.core.urls import credential_in
from engine.core.urls import redact_url as redact_url  # re-exported: callers import it from here

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,47}$"
ENV_PATTERN = r"^[a-z][a-z0-9]{0,15}$"
CRON_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
               "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
SyncMode = Literal["full", "incremental", "cdc"]
WebhookEvent = Literal["succeeded", "failed", "deferred", "cancelled"]


class SpecModel(BaseModel):
    """Base of every spec model: unknown fields are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class SecretRef(SpecModel):
    """A reference to a secret kept in the Vault, resolved by workers at run time."""

    secret: str = Field(pattern=NAME_PATTERN)
    """Name of the secret, as stored with `ipai secret set NAME`."""


class NoAuth(SpecModel):
    """The source needs no credentials."""

    type: Literal["none"] = "none"


class ApiKeyAuth(SpecModel):
    """An API key sent in a header or a query parameter."""

    type: Literal["api_key"]
    key: SecretRef
    """The key itself, by reference."""
    header: str | None = "X-API-Key"
    """Header carrying the key; set to null and use `query_param` to send it in the URL instead."""
    query_param: str | None = None
    """Query parameter carrying the key, when the API wants it in the URL."""


class BearerAuth(SpecModel):
    """A static bearer token (`Authorization: Bearer ...`)."""

    type: Literal["bearer"]
    token: SecretRef


class BasicAuth(SpecModel):
    """HTTP basic authentication."""

    type: Literal["basic"]
    username: str
    password: SecretRef


class OAuth2RefreshAuth(SpecModel):
    """OAuth 2.0 with a refresh token exchanged for short-lived access tokens."""

    type: Literal["oauth2_refresh"]
    token_url: str
    client_id: str
    client_secret: SecretRef
    refresh_token: SecretRef
    scopes: tuple[str, ...] = ()


class ServiceAccountAuth(SpecModel):
    """A Google service account: a signed JWT exchanged for an access token."""

    type: Literal["service_account"]
    key_json: SecretRef
    """The service account's JSON key, by reference."""
    scopes: tuple[str, ...] = ()


Auth = Annotated[
    NoAuth | ApiKeyAuth | BearerAuth | BasicAuth | OAuth2RefreshAuth | ServiceAccountAuth,
    Field(discriminator="type"),
]


class FlattenField(SpecModel):
    """A nested field given its own silver column."""

    column: str = Field(pattern=NAME_PATTERN)
    """The new column's name."""
    path: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+$")
    """The stream's column, then the field's keys, dotted: `user.login` (JSON objects and structs alike)."""
    type: Literal["string", "int64", "float64", "bool", "timestamp", "date"] = "string"
    """A value that does not parse as this type sets its row aside (quarantine), naming the column."""


class SilverOptions(SpecModel):
    """How the stream's silver table is laid out (used when `layers` includes silver)."""

    flatten: tuple[FlattenField, ...] = ()
    """Nested fields to lift into columns of their own (the nested column stays as it is)."""
    partition_by: tuple[str, ...] = ()
    """Delta partition columns, for the table's access pattern (a report's date). A key's value in them
    must never change: merges are scoped to the partitions a batch touches."""


class StreamSpec(SpecModel):
    """One stream to sync, with optional per-stream overrides."""

    name: str = Field(pattern=NAME_PATTERN)
    """Stream name as the connector publishes it (see `ipai spec schema` for each connector's streams)."""
    sync_mode: SyncMode | None = None
    """Overrides the spec's `sync_mode` for this stream."""
    enabled: bool = True
    silver: SilverOptions = SilverOptions()


class LakehouseDestination(SpecModel):
    """The Delta lakehouse: tables land under `<uri>/<schema>/<table>`, e.g. `<uri>/bronze_dev/raw_<name>_<stream>`."""

    enabled: bool = True
    uri: str | None = None
    """A folder or `s3://` URI; defaults to `IPAI_LAKEHOUSE_URI`, then to the local data folder."""


class PostgresDestination(SpecModel):
    """Postgres or Supabase: bronze tables land in the instance's bronze schema through ADBC bulk loads."""

    enabled: bool = True
    url: str | SecretRef | None = None
    """Connection URL; defaults to the control-plane database (`IPAI_DATABASE_URL` or the embedded one)."""
    bronze_schema: str | None = Field(default=None, pattern=NAME_PATTERN)
    """The schema of the bronze tables, instead of the instance's own (`bronze`, `bronze_<env>`, ...:
    see the README's "Where data lands"). A schema another instance's tables are in is refused."""
    silver_schema: str | None = Field(default=None, pattern=NAME_PATTERN)
    """The schema of the silver tables, instead of the instance's own (`silver`, `silver_<env>`, ...)."""

    @field_validator("url")
    @classmethod
    def _no_password_in_clear(cls, value: str | SecretRef | None) -> str | SecretRef | None:
        # A spec is stored whole in the control plane and reviewed in pull requests: no secret in it.
        found = credential_in(value) if isinstance(value, str) else None
        if found:
            raise ValueError(f"the URL carries {found}; store the whole URL as a secret (`ipai secret set "
                             "NAME`) and write url: {secret: NAME}, or set IPAI_DATABASE_URL and leave url unset")
        return value


class Destinations(SpecModel):
    """Where the data lands. Both are on by default."""

    lakehouse: LakehouseDestination = LakehouseDestination()
    postgres: PostgresDestination = PostgresDestination()

    @model_validator(mode="after")
    def _one_enabled(self) -> Destinations:
        if not (self.lakehouse.enabled or self.postgres.enabled):
            raise ValueError("enable at least one destination (lakehouse or postgres)")
        return self


class Tuning(SpecModel):
    """How a run is spread over the Ray cluster."""

    max_in_flight: int | None = Field(default=None, ge=1, le=1024)
    """Read tasks running at once; defaults to twice the cluster's CPUs."""
    commit_rows: int = Field(default=1_000_000, ge=1)
    """Rows gathered from finished partitions before one Delta commit and one Postgres load."""
    read_retries: int = Field(default=3, ge=0, le=20)
    """Times Ray retries a read task whose worker died or that raised a transient error."""


class Webhook(SpecModel):
    """A URL told when a run ends (an n8n Webhook node, or any HTTPS endpoint): a JSON POST signed with
    HMAC-SHA256, retried with backoff, every attempt recorded (`engine/controlplane/webhooks.py` documents the payload)."""

    url: str
    """`https://` endpoint; plain `http://` only to loopback in dev mode (IPAI_DEV_MODE=1). No credentials in
    it: receivers authenticate a delivery by its signature."""
    signing_secret: SecretRef
    """Key of the `X-IPAI-Signature` header (`sha256=` + hex HMAC-SHA256 of the raw body), by reference."""
    events: tuple[WebhookEvent, ...] = ("succeeded", "failed")
    """Run endings that fire it: succeeded, failed, deferred (a source quota parked the run), cancelled."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if credential_in(value) or "@" in urlsplit(value).netloc:
            # Stored whole in the control plane and shown in pull requests: no credentials in a spec.
            raise ValueError("the URL carries credentials (user:password@, ?token= ...); remove them: receivers "
                             "check the X-IPAI-Signature header instead")
        parts = urlsplit(value)
        # `parts.port` raises ValueError itself for a port that is not a number in 0..65535.
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.port == 0:
            raise ValueError("the URL must be https://HOST/... (http:// only to loopback in dev mode)")
        return value

    @field_validator("events")
    @classmethod
    def _some_events(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list at least one event (succeeded, failed, deferred, cancelled)")
        twice = repeated(value)
        if twice:
            raise ValueError(f"event listed more than once: {', '.join(twice)}")
        return value


class ConnectorSpec(SpecModel):
    """Fields every connector spec shares; each connector narrows `source_type` and `source`."""

    name: str = Field(pattern=NAME_PATTERN)
    """Connector instance name: lower case, digits and `_`. Bronze tables are `raw_<name>_<stream>`."""
    source_type: str
    """Which connector reads the source (`ipai spec validate` lists the known ones)."""
    description: str = ""
    env: str = Field(default="dev", pattern=ENV_PATTERN)
    """Environment of the instance (dev, staging, prod ...); one instance per (tenant, name, env). Lower case
    letters and digits (no `_`: the env ends the name of the instance's schemas, `bronze_dev`)."""
    auth: Auth = NoAuth()
    sync_mode: SyncMode = "incremental"
    """`full` re-reads everything each run; `incremental` reads what changed since the stored cursor;
    `cdc` follows a change log where the source has one."""
    schedule: str | None = None
    """Cron expression (5 fields, UTC) for the scheduler; null for manual runs only."""
    streams: tuple[StreamSpec, ...] = ()
    """Streams to sync; empty means every stream the connector offers."""
    destinations: Destinations = Destinations()
    layers: tuple[Literal["bronze", "silver", "gold"], ...] = ("bronze",)
    """Layers to build after the load; bronze is always written. With `silver`, each stream's finished
    extractions are merged into `silver/<name>_<stream>` (Delta) and `silver."<name>_<stream>"`
    (Postgres): one row per primary key, the latest version, deletes as `_ipai_deleted`."""
    tuning: Tuning = Tuning()
    webhooks: tuple[Webhook, ...] = ()
    """URLs to POST a signed summary to when a run ends (n8n and the like); none by default."""

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        """The syntax the control plane evaluates (ipai.cron_parse): checked offline here with croniter."""
        if value is None:
            return value
        expr = CRON_MACROS.get(value.strip().lower(), value)
        if len(expr.split()) != 5 or not croniter.is_valid(expr):
            raise ValueError(f"{value!r} is not a 5-field cron expression (minute hour day month weekday)")
        if re.search(r"[#?]", expr) or re.search(r"(^|[\s,/-])([0-9]*l|[0-9]+w|lw)($|[\s,/-])", expr.lower()):
            raise ValueError(f"{value!r}: L, W, # and ? are not supported; use plain fields, ranges, steps and lists")
        return value

    @field_validator("env")
    @classmethod
    def _env_is_not_a_layer(cls, value: str) -> str:
        if value in ("bronze", "silver", "gold"):
            raise ValueError(f"env {value!r} is a layer's name, which would make schema names ambiguous "
                             "(`bronze_silver`); choose another env name")
        return value

    @field_validator("streams")
    @classmethod
    def _unique_streams(cls, value: tuple[StreamSpec, ...]) -> tuple[StreamSpec, ...]:
        twice = repeated(s.name for s in value)
        if twice:
            raise ValueError(f"stream listed more than once: {', '.join(twice)}")
        return value

    def silver_options(self, stream: str) -> SilverOptions:
        """Return the silver layout of `stream` (its spec entry's, else the default)."""
        return next((s.silver for s in self.streams if s.name == stream), SilverOptions())

    def stream_mode(self, stream: str) -> SyncMode:
        """Return the sync mode of `stream`, honouring a per-stream override."""
        for s in self.streams:
            if s.name == stream and s.sync_mode is not None:
                return s.sync_mode
        return self.sync_mode


def selected_streams(spec: ConnectorSpec, offered: list[str]) -> list[str]:
    """Return the streams a spec asks for, in spec order; every name must be one the connector offers."""
    if not spec.streams:
        return list(offered)
    unknown = [s.name for s in spec.streams if s.name not in offered]
    if unknown:
        raise ValueError(
            f"unknown stream {', '.join(unknown)} for source_type {spec.source_type!r}; "
            f"it offers: {', '.join(offered)}"
        )
    return [s.name for s in spec.streams if s.enabled]


def repeated(values: Iterable[str]) -> list[str]:
    """Return the values that occur more than once, sorted."""
    counts = Counter(values)
    return sorted(v for v, n in counts.items() if n > 1)
