"""The MCP server for agents (FR-034..038, US-004): the platform's connectors as MCP tools.

Run it with `ipai mcp` (stdio, for a local agent; acts for the settings' tenant, as the CLI does) or
`ipai mcp --http` (streamable HTTP; every request carries `Authorization: Bearer <token>` from
`ipai token create`, and acts for that token's tenant only; an expired token is answered 401 with a message
saying so, and each token may make `--requests-per-minute` tool calls a minute, more are answered
`rate_limited`). Beyond loopback, HTTP is served only with TLS (`--tls-cert/--tls-key`) or, behind a proxy that
terminates TLS, with `--insecure`; HTTP callers cannot make a pipeline read server files (spec steps, gold
`dir`). Every tool answers one JSON object:

    {"ok": true, ...}
    {"ok": false, "error": {"code": "...", "message": "...", "details": {...}, "retryable": false}}

so an agent can branch on `code` and `retryable` without parsing prose. Tools that read or queue runs
call the control plane's RPC functions (supabase/migrations/*_rpc.sql), the same ones PostgREST serves:
one set of rules for tenancy, one active run per instance, and answers for another tenant's instance
identical to a missing one.

This file lives in a plain folder, never a package named `mcp`: that name belongs to the library FastMCP
imports. `ipai mcp` loads it by path.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import psycopg
from fastmcp import FastMCP
from fastmcp.server.auth import AccessToken, TokenVerifier
from fastmcp.server.dependencies import get_access_token
from ruamel.yaml import YAML
from starlette.authentication import AuthenticationError
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse

from engine.controlplane import records

from engine.controlplane import tokens
from engine.controlplane.settings import Settings
from engine.controlplane.db import Database, migrate, open_database
from engine.core.errors import ConfigError, DatabaseUnreachable, IpaiError, NotFound, RunConflict, SpecError
from engine.pipelines.definition import Pipeline, load_pipeline, parse_pipeline
from engine.pipelines.records import check_instances, pipeline_status
from engine.pipelines.runner import start_pipeline
from engine.core.secrets import secret_refs
from engine.controlplane.vault import list_secrets, vault_session
from engine.core.spec import ConnectorSpec, redact_url
from connectors.specload import parse_spec
from engine.core.yamlfile import MAX_DEPTH, read_mapping

log = logging.getLogger("ipai.mcp")

INSTRUCTIONS = """\
IPAI Data Connectors: sync SaaS APIs and databases into a Delta lakehouse and Postgres.
Typical flow: connector_validate(spec) -> connector_create(spec) -> connector_run(instance_id) -> poll
connector_status(run_id) until status is succeeded/failed/deferred -> connector_logs(run_id).
Every answer has "ok"; on false, read error.code and error.retryable."""

# Error codes an agent may see, and whether trying the same call again later can succeed.
RETRYABLE = {"unavailable": True, "conflict": True, "internal": True, "rate_limited": True}
PRD_NAMES = {"connector_list": "connector:list", "connector_create": "connector:create",
             "connector_run": "connector:run", "connector_status": "connector:status",
             "connector_logs": "connector:logs"}
"""The PRD's names: MCP tool names (SEP-986) and common LLM clients' function names allow no `:`."""


def error(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message, "details": details or {},
                                   "retryable": RETRYABLE.get(code, False)}}


@dataclass
class Platform:
    """The control plane the tools act on: migrated once at start, a connection per call."""

    settings: Settings
    db: Database
    local_tenant_id: str

    @classmethod
    def open(cls, settings: Settings) -> Platform:
        db = open_database(settings)
        with db.connect() as conn:
            migrate(conn)
            if settings.tenant == "local":
                row = conn.execute("select id from ipai_tenants where name = 'local'").fetchone()
            else:
                row = conn.execute("select id from ipai_tenants where name = %s or id::text = %s",
                                   (settings.tenant, settings.tenant)).fetchone()
            if row is None:
                raise ConfigError(f"no tenant {settings.tenant!r} (IPAI_TENANT); create it with "
                                  f"`ipai tenant create {settings.tenant}` or unset IPAI_TENANT")
        return cls(settings, db.with_session(vault_session(settings.home)), str(row[0]))

    def database(self, tenant_id: str) -> Database:
        return self.db.with_session({"ipai.tenant_id": tenant_id})

    def connect(self, tenant_id: str) -> psycopg.Connection[Any]:
        return self.database(tenant_id).connect()

    def owner(self, token: str) -> tokens.TokenOwner | None:
        with self.db.connect() as conn:
            return tokens.verify_token(conn, token)


class ControlPlaneTokens(TokenVerifier):
    """Bearer tokens made by `ipai token create`: each one acts for its tenant."""

    def __init__(self, platform: Platform) -> None:
        super().__init__()
        self.platform = platform

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            owner = await anyio.to_thread.run_sync(self.platform.owner, token)
        except tokens.TokenExpired as exc:
            raise AuthenticationError(str(exc)) from None  # answered by `_refused`: 401 with the reason
        if owner is None:
            return None
        return AccessToken(token=token, client_id=owner.name, scopes=[],
                           expires_at=int(owner.expires_at.timestamp()) if owner.expires_at else None,
                           claims={"tenant_id": owner.tenant_id, "tenant": owner.tenant, "token_id": owner.token_id,
                                   "token": owner.name})

    def get_middleware(self) -> list[Any]:
        """FastMCP's authentication, answering a refusal that has a reason (an expired token) with that reason."""
        layers = super().get_middleware()
        first = layers[0]
        layers[0] = Middleware(first.cls, *first.args, **{**first.kwargs, "on_error": _refused})
        return layers


def _refused(conn: HTTPConnection, exc: Exception) -> JSONResponse:
    reason = str(exc)
    return JSONResponse({"error": "invalid_token", "error_description": reason}, status_code=401,
                        headers={"WWW-Authenticate": 'Bearer error="invalid_token", error_description="'
                                 + reason.replace('"', "'") + '"'})


def build_server(platform: Platform, *, http: bool, pipeline_workers: bool = True,
                 requests_per_minute: int = 120) -> FastMCP:
    """The FastMCP server with every tool; over HTTP, only requests with a valid token get through, and each
    token makes at most `requests_per_minute` tool calls a minute (0: no limit).
    `pipeline_workers`: pipelines start local workers for their parallel steps (false where a fleet serves)."""
    budget = tokens.RequestBudget(requests_per_minute)
    server: FastMCP = FastMCP("ipai", instructions=INSTRUCTIONS, auth=ControlPlaneTokens(platform) if http else None,
                              mask_error_details=True)

    def tenant() -> str:
        if not http:
            return platform.local_tenant_id
        token = get_access_token()
        if token is None or not token.claims.get("tenant_id"):
            raise PermissionError("no valid bearer token")  # the auth middleware answers 401 before this
        return str(token.claims["tenant_id"])

    def over_budget() -> dict[str, Any] | None:
        token = get_access_token() if http else None
        if token is None:
            return None
        wait = budget.spend(str(token.claims.get("token_id") or token.client_id))
        if wait is None:
            return None
        return error("rate_limited", f"token {token.claims.get('token', '')!r} has made its {budget.per_minute} "
                     f"requests of this minute (the server's --requests-per-minute); try again in {wait:.0f} s",
                     {"retry_after_s": round(wait, 1), "requests_per_minute": budget.per_minute})

    def answer(call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        refused = over_budget()
        if refused is not None:
            return refused
        try:
            return call()
        except SpecError as exc:
            return error("invalid_spec", str(exc), {"errors": _spec_errors(exc)})
        except NotFound as exc:
            return error("not_found", str(exc))
        except RunConflict as exc:
            return error("conflict", str(exc), {"active_run_id": getattr(exc, "active_run_id", None)})
        except (DatabaseUnreachable, psycopg.OperationalError) as exc:
            return error("unavailable", redact_url(str(exc).strip().splitlines()[0] if str(exc).strip()
                                                   else "the control plane cannot be reached"))
        except IpaiError as exc:
            return error("invalid_argument", str(exc))
        except Exception:
            log.exception("tool failed")  # the server's stderr; never the agent's answer
            return error("internal", "the server failed to answer; its log (stderr) has the details")

    def rpc(sql: str, *params: Any) -> dict[str, Any]:
        with platform.connect(tenant()) as conn:
            row = conn.execute(sql, params).fetchone()  # type: ignore[arg-type]  # fixed statements only
        result: dict[str, Any] = json.loads(json.dumps(row[0] if row else {}, default=str))
        if not result.get("ok", False):
            failure = result.get("error") or {}
            return error(failure.get("code", "internal"), failure.get("message", "no answer"),
                         failure.get("details") or {})
        return result

    @server.tool(annotations={"readOnlyHint": True})
    def connector_list() -> dict[str, Any]:
        """List this tenant's connector instances (PRD `connector:list`): id, name, env, source type, schedule,
        next scheduled run and the latest run."""
        return answer(lambda: rpc("select public.connector_list()"))

    @server.tool(annotations={"readOnlyHint": True})
    def connector_validate(spec: str | dict[str, Any]) -> dict[str, Any]:
        """Check a connector spec (YAML or JSON text, or an object) without storing it. On failure,
        error.details.errors lists every problem with its path, line and column."""
        def call() -> dict[str, Any]:
            parsed = parse_spec(_spec_text(spec), filename="spec")
            return {"ok": True, **_summary(parsed)}
        return answer(call)

    @server.tool
    def connector_create(spec: str | dict[str, Any], env: str | None = None,
                         schedule: str | None = None) -> dict[str, Any]:
        """Create or update a connector instance from a spec (PRD `connector:create`): YAML or JSON text, or an
        object; `env` and `schedule` override the spec's. The whole spec is validated first (every error with
        its path); a new version is stored only when the text changed. Returns instance_id for connector_run."""
        def call() -> dict[str, Any]:
            text = _with_overrides(_spec_text(spec), env=env, schedule=schedule)
            parsed = parse_spec(text, filename="spec")
            with platform.connect(tenant()) as conn:
                registered = records.register(conn, parsed, text)
                stored = {s["name"] for s in list_secrets(conn)}
            missing = sorted({ref.secret for _, ref in secret_refs(parsed)} - stored)
            result = {"ok": True, "instance_id": registered.instance_id, "definition_id": registered.definition_id,
                      "version": registered.version, **_summary(parsed)}
            if missing:
                result["warnings"] = [f"secret {name!r} is not in the Vault yet: runs will fail until it is set "
                                      f"(`ipai secret set {name}` or the secret_set RPC)" for name in missing]
            return result
        return answer(call)

    @server.tool
    def connector_run(instance_id: str, env: str | None = None, full_refresh: bool = False) -> dict[str, Any]:
        """Queue a sync of an instance (PRD `connector:run`; its id or name) and return run_id. If the instance
        already has a run queued or running, that run is returned with created=false. Workers (`ipai worker`,
        or the ones `ipai mcp` starts) run it; follow it with connector_status."""
        return answer(lambda: rpc("select public.connector_run(%s, %s, %s)", instance_id, env, full_refresh))

    @server.tool(annotations={"readOnlyHint": True})
    def connector_status(run_id: str | None = None, instance_id: str | None = None,
                         env: str | None = None) -> dict[str, Any]:
        """A run's status (PRD `connector:status`): by run_id, or the latest run of instance_id. status is one of
        queued, running, succeeded, failed, deferred (a source quota is spent; see deferred_until), cancelled;
        rows_processed and rows_by_stream count what landed."""
        return answer(lambda: rpc("select public.connector_status(%s, %s, %s)", run_id, instance_id, env))

    @server.tool(annotations={"readOnlyHint": True})
    def connector_logs(run_id: str, after: int = 0, limit: int = 200) -> dict[str, Any]:
        """A run's structured logs (PRD `connector:logs`), oldest first: id, ts, level, event, message, fields.
        Page with after=<next_after of the previous answer>; limit is at most 5000."""
        return answer(lambda: rpc("select public.connector_logs(%s, %s, %s)", run_id, after, limit))

    def pipeline_of(text: str | None, path: str | None) -> Pipeline:
        if (text is None) == (path is None):
            raise ConfigError("give the pipeline as YAML text (pipeline) or, over stdio, a file path (path)")
        if path is not None:
            if http:
                raise ConfigError("path: files on the server are readable over stdio only; send the pipeline's "
                                  "YAML text instead")
            return load_pipeline(path)
        # Over HTTP, spec steps and gold `dir` are refused before any file is looked at: no server folder
        # is read, nor is its existence told.
        return parse_pipeline(str(text), "pipeline", base_dir=Path.cwd(), server_files=not http)

    @server.tool(annotations={"readOnlyHint": True})
    def pipeline_validate(pipeline_yaml: str | None = None, path: str | None = None) -> dict[str, Any]:
        """Check a pipeline (a YAML DAG of connector runs and gold refreshes: steps with run/spec/gold and
        needs) without running it: a cycle, an unknown step or instance, an invalid spec file, each with its path."""
        def call() -> dict[str, Any]:
            parsed = pipeline_of(pipeline_yaml, path)
            with platform.connect(tenant()) as conn:
                check_instances(conn, parsed)
            return {"ok": True, "pipeline": parsed.name,
                    "steps": [{"name": s.name, "target": s.target, "needs": list(s.needs)} for s in parsed.steps]}
        return answer(call)

    @server.tool
    def pipeline_run(pipeline_yaml: str | None = None, path: str | None = None) -> dict[str, Any]:
        """Start a pipeline (PRD FR-040): steps whose needs succeeded run in parallel; a failed step stops the
        steps that need it. Returns pipeline_run_id at once; follow it with pipeline_status."""
        def call() -> dict[str, Any]:
            parsed = pipeline_of(pipeline_yaml, path)
            db = platform.database(tenant())
            run_id = start_pipeline(db, platform.settings, parsed, local_workers=pipeline_workers)
            with db.connect() as conn:
                return {"ok": True, **pipeline_status(conn, run_id)}
        return answer(call)

    @server.tool(name="pipeline_status", annotations={"readOnlyHint": True})
    def pipeline_status_tool(pipeline_run_id: str) -> dict[str, Any]:
        """A pipeline run: status (queued, running, succeeded, failed), failed_step and error (which step and
        why), and each step's status, run_id, rows and reason (skipped steps name the step that failed)."""
        def call() -> dict[str, Any]:
            with platform.connect(tenant()) as conn:
                return {"ok": True, **pipeline_status(conn, pipeline_run_id)}
        return answer(call)

    return server


def _spec_text(spec: str | dict[str, Any]) -> str:
    if isinstance(spec, dict):
        _check_depth(spec)  # before dumping: the dumper recurses once per level
        out = io.StringIO()
        YAML(typ="safe", pure=True).dump(spec, out)
        return out.getvalue()
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError("spec: give the connector spec as YAML or JSON text, or an object", issues=[])
    return spec


def _with_overrides(text: str, *, env: str | None, schedule: str | None) -> str:
    """The spec text with env/schedule replaced; comments and order kept (the stored text is reviewed)."""
    if env is None and schedule is None:
        return text
    # Loaded within the spec limits (size, depth, no aliases): the same refusals parse_spec would give.
    data = read_mapping(text, "spec", "a spec must be a mapping of fields (name, source_type, ...)")
    if env is not None:
        data["env"] = env
    if schedule is not None:
        data["schedule"] = schedule
    out = io.StringIO()
    YAML(typ="rt").dump(data, out)
    return out.getvalue()


def _check_depth(value: Any) -> None:
    """Refuse a spec object nested deeper than spec files may be (engine/core/yamlfile.py), without recursing."""
    level: list[Any] = [value]
    for _ in range(MAX_DEPTH + 1):
        level = [v for item in level for v in (item.values() if isinstance(item, dict) else item)
                 if isinstance(v, (dict, list))]
        if not level:
            return
    raise SpecError(f"spec: nested more than {MAX_DEPTH} levels deep", issues=[])


def _summary(spec: ConnectorSpec) -> dict[str, Any]:
    # None: every stream the connector offers (listing them may need the source, e.g. a database's tables).
    streams = [s.name for s in spec.streams] or None
    return {"name": spec.name, "env": spec.env, "source_type": spec.source_type, "schedule": spec.schedule,
            "sync_mode": spec.sync_mode, "layers": list(spec.layers), "streams": streams}


def _spec_errors(exc: SpecError) -> list[dict[str, Any]]:
    if not exc.issues:
        return [{"path": "", "message": str(exc)}]
    return [{"path": i.path, "line": i.line, "column": i.column, "message": i.message} for i in exc.issues]


def serve(settings: Settings, *, http: bool, host: str = "127.0.0.1", port: int = 8765,
          pipeline_workers: bool = True, tls: tuple[str, str] | None = None, requests_per_minute: int = 120) -> None:
    """Serve until the client closes stdio, or until interrupted over HTTP (HTTPS with `tls`: cert and key
    files). The CLI has checked the address (`check_bind`): beyond loopback only with TLS or `--insecure`."""
    platform = Platform.open(settings)
    server = build_server(platform, http=http, pipeline_workers=pipeline_workers,
                          requests_per_minute=requests_per_minute)
    if http:
        ssl = {"ssl_certfile": tls[0], "ssl_keyfile": tls[1]} if tls else {}
        server.run(transport="http", host=host, port=port, path="/mcp", show_banner=False, uvicorn_config=ssl)
    else:
        logging.basicConfig(stream=sys.stderr, level=logging.WARNING)  # stdout carries the protocol
        server.run(transport="stdio", show_banner=False)
