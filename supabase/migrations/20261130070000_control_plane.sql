-- Control plane: connector definitions, instances, runs, the per-partition state ledger, run logs.
-- Runs on hosted Supabase and on plain Postgres (no Supabase-only objects here). Append-only: change
-- the schema with a new, later migration file.

-- gen_random_uuid() is built in from PostgreSQL 13; no extension needed (the embedded server has none).

create table if not exists connector_definitions (
    id          uuid primary key default gen_random_uuid(),
    name        text not null,
    type        text not null,                 -- the spec's source_type
    yaml_spec   text not null,
    spec_sha256 text not null,
    version     integer not null,
    enabled     boolean not null default true,
    created_at  timestamptz not null default now(),
    unique (name, version),
    unique (name, spec_sha256)
);
comment on table connector_definitions is 'Every reviewed version of a connector spec (FR-018).';

create table if not exists connector_instances (
    id            uuid primary key default gen_random_uuid(),
    definition_id uuid not null references connector_definitions (id),
    name          text not null,
    env           text not null default 'dev',
    schedule      text,                        -- cron, UTC; null = manual only
    status        text not null default 'active' check (status in ('active', 'paused', 'disabled')),
    created_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now(),
    unique (name, env)
);
comment on table connector_instances is 'A definition deployed in one environment (FR-019).';

create table if not exists connector_runs (
    id             uuid primary key default gen_random_uuid(),
    instance_id    uuid not null references connector_instances (id) on delete cascade,
    definition_id  uuid references connector_definitions (id),
    status         text not null default 'queued'
                   check (status in ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'deferred')),
    trigger        text not null default 'cli',
    full_refresh   boolean not null default false,
    started_at     timestamptz,
    ended_at       timestamptz,
    heartbeat_at   timestamptz,
    rows_processed bigint not null default 0,
    partitions_total integer not null default 0,
    partitions_done  integer not null default 0,
    rows_by_stream jsonb not null default '{}'::jsonb,
    error          text,
    error_details  jsonb,
    timings        jsonb not null default '{}'::jsonb,
    ray_job_id     text,
    created_at     timestamptz not null default now()
);
comment on table connector_runs is 'One row per sync run (FR-020); rows, timings and the error that ended it.';
create index if not exists connector_runs_instance_idx on connector_runs (instance_id, created_at desc);
-- Never two active runs of one instance: the database refuses the second.
create unique index if not exists connector_runs_one_active
    on connector_runs (instance_id) where status in ('queued', 'running');

-- An extraction is one planned read of a stream: its partitions and the cursor window they cover.
-- A run that stops early leaves it open; the next run finishes the same partitions (same keys),
-- so what was committed is recognised and skipped.
create table if not exists connector_extractions (
    id           uuid primary key default gen_random_uuid(),
    instance_id  uuid not null references connector_instances (id) on delete cascade,
    stream       text not null,
    run_id       uuid references connector_runs (id) on delete set null,
    sync_mode    text not null,
    cursor_from  jsonb,
    cursor_to    jsonb,
    partitions   jsonb not null,
    status       text not null default 'open' check (status in ('open', 'done', 'abandoned')),
    created_at   timestamptz not null default now(),
    finished_at  timestamptz
);
create unique index if not exists connector_extractions_one_open
    on connector_extractions (instance_id, stream) where status = 'open';

-- The state ledger (FR-021, FR-005): one row per committed partition, plus one 'cursor' row per
-- stream holding its watermark. A partition row is written only after its data is committed in
-- every destination, so state is never ahead of data.
create table if not exists connector_state (
    instance_id   uuid not null references connector_instances (id) on delete cascade,
    stream        text not null,
    kind          text not null check (kind in ('partition', 'cursor')),
    key           text not null,
    extraction_id uuid references connector_extractions (id) on delete cascade,
    run_id        uuid references connector_runs (id) on delete set null,
    rows          bigint,
    state_json    jsonb not null default '{}'::jsonb,
    updated_at    timestamptz not null default now(),
    primary key (instance_id, stream, kind, key)
);

-- Structured JSON run logs (FR-007, NFR-008).
create table if not exists connector_run_logs (
    id      bigserial primary key,
    run_id  uuid not null references connector_runs (id) on delete cascade,
    ts      timestamptz not null default clock_timestamp(),
    level   text not null check (level in ('debug', 'info', 'warning', 'error')),
    event   text not null,
    message text not null,
    fields  jsonb not null default '{}'::jsonb
);
create index if not exists connector_run_logs_run_idx on connector_run_logs (run_id, id);
