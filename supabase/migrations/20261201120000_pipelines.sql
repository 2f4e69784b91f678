-- Pipelines (FR-040): one row per run of a pipeline file, a DAG of connector runs and gold refreshes
-- (engine/pipelines/definition.py, `ipai pipeline run`, the MCP pipeline tool). The process that runs the pipeline
-- writes the row as it goes, so `ipai pipeline status ID` and agents can read it during and after the run.
--
--   steps        one object per step, in the file's order: name, kind (run | spec | gold), target, needs,
--                status (pending | queued | running | succeeded | failed | deferred | skipped), run_id (the
--                connector run), error, started_at, ended_at, and rows or detail. A pipeline has a handful of
--                steps, so the array stays small; the connector runs keep their own logs and metrics.
--   failed_step  the first step that did not succeed (its dependants are `skipped`), with `error` its reason.
--   heartbeat_at renewed while the running process is alive: a `running` row whose heartbeat is old lost its
--                process.
--
-- Rights, as for the other control-plane tables: a Supabase user reads the rows of their tenants; pipelines
-- are started through the CLI or the MCP server (the owner role, acting for one tenant), never written by
-- API users or workers.

create table if not exists pipeline_runs (
    id           uuid primary key default gen_random_uuid(),
    tenant_id    uuid not null default ipai.current_tenant() references ipai_tenants (id) on delete cascade,
    name         text not null,
    source       text not null,
    base_dir     text not null,
    definition   text not null,
    status       text not null default 'queued' check (status in ('queued', 'running', 'succeeded', 'failed')),
    steps        jsonb not null default '[]'::jsonb check (jsonb_typeof(steps) = 'array'),
    failed_step  text,
    error        text,
    created_at   timestamptz not null default now(),
    started_at   timestamptz,
    heartbeat_at timestamptz,
    ended_at     timestamptz
);
create index if not exists pipeline_runs_tenant_created_idx on pipeline_runs (tenant_id, created_at desc);
comment on table pipeline_runs is
    'Runs of pipeline files (a DAG of connector runs and gold refreshes) and what each step did.';
comment on column pipeline_runs.source is 'The pipeline file the run was started from.';
comment on column pipeline_runs.base_dir is 'The folder spec paths of the definition are relative to.';
comment on column pipeline_runs.definition is 'The pipeline YAML as it was when the run started.';

alter table pipeline_runs enable row level security;
revoke all on table pipeline_runs from public, anon, authenticated;
grant select on pipeline_runs to authenticated;
create policy tenant_read on pipeline_runs for select to authenticated
    using (tenant_id in (select ipai.user_tenants()));
