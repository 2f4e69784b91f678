"""Where an instance's tables live: one rule for Postgres schemas, Delta folders and table names.

Every physical table belongs to exactly one connector instance, and its address carries what makes the
instance unique, its tenant, env and name:

    schema (Postgres) and folder (Delta)   [<tenant>_]<layer>[_<env>]
        the tenant is left out for the default tenant (`local`), the env for `prod`: a single-tenant
        deployment's prod tables are `bronze.raw_shop_orders` and `<lakehouse>/bronze/raw_shop_orders`,
        its dev tables `bronze_dev.raw_shop_orders`, tenant acme's `acme_bronze_dev.raw_shop_orders`
    table                                  raw_<name>_<stream> (bronze), <name>_<stream> (silver),
                                           quarantine_<name>_<stream> (beside bronze)

The schema name can be read back unambiguously (`parse_schema`) because an env is lower-case letters and
digits only and never a layer's name: the last part is the layer when there is no env, else the env.

An identifier longer than PostgreSQL's 63 bytes is never truncated silently: it gets a short form, its
first 54 characters, `_` and 8 hex digits of the SHA-256 of the whole name (`fit_identifier`). The short
form is the same on every run, and two names differing anywhere get different short forms.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from layers.delta import table_uri

LAYERS = ("bronze", "silver", "gold")
DEFAULT_TENANT = "local"
"""The tenant whose schemas carry no tenant prefix (settings' default tenant)."""
PLAIN_ENV = "prod"
"""The env whose schemas carry no env suffix."""
MAX_IDENTIFIER_BYTES = 63
"""PostgreSQL's NAMEDATALEN - 1: a longer identifier is truncated by the server."""
_HASH_CHARS = 8


def fit_identifier(name: str) -> str:
    """`name` when it fits in 63 bytes, else its deterministic short form (see the module's docstring)."""
    raw = name.encode()
    if len(raw) <= MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:_HASH_CHARS]
    keep = raw[: MAX_IDENTIFIER_BYTES - _HASH_CHARS - 1].decode(errors="ignore")
    return f"{keep}_{digest}"


def schema_name(layer: str, *, tenant: str = DEFAULT_TENANT, env: str = PLAIN_ENV) -> str:
    """The Postgres schema (and Delta folder) of `layer` for the tenant and env."""
    if layer not in LAYERS:
        raise ValueError(f"unknown layer {layer!r}")
    parts = ([] if tenant == DEFAULT_TENANT else [tenant]) + [layer] + ([] if env == PLAIN_ENV else [env])
    return fit_identifier("_".join(parts))


def parse_schema(name: str) -> tuple[str, str, str] | None:
    """(tenant, layer, env) of a schema named by `schema_name`, or None when `name` is not one."""
    parts = name.split("_")
    if parts[-1] in LAYERS:
        layer, env, rest = parts[-1], PLAIN_ENV, parts[:-1]
    elif len(parts) >= 2 and parts[-2] in LAYERS:
        layer, env, rest = parts[-2], parts[-1], parts[:-2]
    else:
        return None
    tenant = "_".join(rest) if rest else DEFAULT_TENANT
    if (rest and tenant == DEFAULT_TENANT) or schema_name(layer, tenant=tenant, env=env) != name:
        return None
    return tenant, layer, env


@dataclass(frozen=True)
class Address:
    """What makes an instance unique, and so where each of its tables lives."""

    tenant: str
    env: str
    instance: str

    def schema(self, layer: str) -> str:
        return schema_name(layer, tenant=self.tenant, env=self.env)

    def bronze_table(self, stream: str) -> str:
        return fit_identifier(f"raw_{self.instance}_{stream}")

    def silver_table(self, stream: str) -> str:
        return fit_identifier(f"{self.instance}_{stream}")

    def quarantine_table(self, stream: str) -> str:
        """Rows bronze or silver could not take, kept beside bronze."""
        return fit_identifier(f"quarantine_{self.instance}_{stream}")

    def delta_uri(self, lakehouse_uri: str, layer: str, table: str) -> str:
        """The Delta folder of `table` of `layer` under the lakehouse."""
        return table_uri(lakehouse_uri, self.schema(layer), table)

    def long_names(self, streams: list[str]) -> list[tuple[str, str]]:
        """(full name, short form) of each schema and table of `streams` that does not fit in 63 bytes."""
        full = [("_".join(([] if self.tenant == DEFAULT_TENANT else [self.tenant]) + [layer]
                          + ([] if self.env == PLAIN_ENV else [self.env])), layer) for layer in ("bronze", "silver")]
        names = [name for name, _ in full]
        for s in streams:
            names += [f"raw_{self.instance}_{s}", f"{self.instance}_{s}", f"quarantine_{self.instance}_{s}"]
        return [(n, fit_identifier(n)) for n in dict.fromkeys(names) if fit_identifier(n) != n]
