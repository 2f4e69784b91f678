"""The Odoo source (16+): accounting, sales and catalogue models, read from Odoo's own PostgreSQL or through
its external APIs.

    spec.py    the spec models: OdooSpec, its two kinds of source (OdooPostgresSource, OdooApiSource) and
               the models it reads (MODELS)
    source.py  `streams(spec)`, and `mode: postgres`: each model a query stream of the `database` source
    api.py     `mode: jsonrpc` / `json2`: planning, paging by id ranges and write_date windows, typing
    rpc.py     calling Odoo's model methods: authentication, sessions, JSON-RPC errors, over httpkit

Imports run one way: source -> api -> rpc -> spec. This package's own names (below) are what the connector
registry uses; no module inside it imports the package.
"""

from __future__ import annotations

from connectors.odoo.source import streams
from connectors.odoo.spec import OdooApiSource, OdooPostgresSource, OdooSpec

__all__ = ["OdooApiSource", "OdooPostgresSource", "OdooSpec", "streams"]
