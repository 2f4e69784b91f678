-- Tenants own everything in the control plane. A user (Supabase auth.uid()) belongs to tenants through
-- `ipai_tenant_members`; only that table says who may see what (claims a user can edit, such as
-- `user_metadata`, are never read). The CLI and other sessions without a signed-in user act for the tenant
-- named by the session setting `ipai.tenant_id`, else the built-in `local` tenant.
--
-- Roles: `ipai_worker` is how workers and schedulers connect (its own login; set a password for it on a
-- real server); `ipai_bronze` owns the bronze tables that runs load, so whoever runs a sync (a worker,
-- the CLI) writes them as the same role.

create schema if not exists ipai;
comment on schema ipai is 'IPAI Data Connectors internals: tenancy helpers, cron, scheduler, secret access.';
revoke all on schema ipai from public;

do $$
declare
    r record;
begin
    for r in select * from (values ('ipai_worker', 'login noinherit'), ('ipai_bronze', 'nologin noinherit'))
             as t(name, options)
    loop
        if not exists (select from pg_roles where rolname = r.name) then
            begin
                execute format('create role %I %s', r.name, r.options);
            exception when duplicate_object or unique_violation then
                null;  -- roles are server-wide: another database created it a moment ago
            end;
        end if;
    end loop;
end $$;

-- The worker writes bronze as ipai_bronze (layers/postgres.py: `set role` when it may).
grant ipai_bronze to ipai_worker;
do $$
begin
    execute format('grant ipai_bronze to %I', current_user);  -- so the migrating role (Supabase: postgres) may too
exception when others then
    null;  -- a superuser needs no grant
end $$;
create schema if not exists bronze;
alter schema bronze owner to ipai_bronze;
do $$
declare
    t record;
begin
    for t in select c.oid::regclass as rel from pg_class c join pg_namespace n on n.oid = c.relnamespace
              where n.nspname = 'bronze' and c.relkind in ('r', 'p', 'S')
    loop
        execute format('alter table %s owner to ipai_bronze', t.rel);
    end loop;
end $$;
revoke all on schema bronze from public;

create table if not exists ipai_tenants (
    id         uuid primary key default gen_random_uuid(),
    name       text not null unique check (name ~ '^[a-z][a-z0-9_]{0,47}$'),
    created_at timestamptz not null default now()
);
comment on table ipai_tenants is 'Who owns control-plane rows; every other table carries tenant_id.';
insert into ipai_tenants (id, name) values ('00000000-0000-0000-0000-000000000001', 'local')
    on conflict do nothing;

create table if not exists ipai_tenant_members (
    tenant_id  uuid not null references ipai_tenants (id) on delete cascade,
    user_id    uuid not null,
    role       text not null default 'member' check (role in ('owner', 'member')),
    created_at timestamptz not null default now(),
    primary key (tenant_id, user_id)
);
create index if not exists ipai_tenant_members_user_idx on ipai_tenant_members (user_id);
comment on table ipai_tenant_members is
    'Supabase users (auth.uid()) in each tenant; written by admins (service role), read by RLS.';

-- Tenants of the signed-in user. SECURITY DEFINER so policies can read memberships without recursion.
create or replace function ipai.user_tenants() returns setof uuid
    language sql stable security definer set search_path = ''
    as $$ select m.tenant_id from public.ipai_tenant_members m where m.user_id = auth.uid() $$;

-- The tenant a new row belongs to when none is given, and the one RPCs act for:
--   a signed-in user: `app_metadata.tenant_id` (only admins can set it) when they belong to it, else their
--   only tenant (null when they have several and none is chosen, or none);
--   any other session: the setting `ipai.tenant_id`, else the `local` tenant.
create or replace function ipai.current_tenant() returns uuid
    language plpgsql stable security definer set search_path = ''
    as $$
    declare
        uid uuid := auth.uid();
        chosen text;
        only_one uuid;
    begin
        if uid is not null then
            chosen := auth.jwt() -> 'app_metadata' ->> 'tenant_id';
            if chosen is not null and exists (select from public.ipai_tenant_members m
                                               where m.user_id = uid and m.tenant_id::text = chosen) then
                return chosen::uuid;
            end if;
            select min(m.tenant_id::text)::uuid into only_one from public.ipai_tenant_members m where m.user_id = uid
            having count(*) = 1;
            return only_one;
        end if;
        return coalesce(nullif(current_setting('ipai.tenant_id', true), '')::uuid,
                        '00000000-0000-0000-0000-000000000001'::uuid);
    end
    $$;

-- tenant_id on every control-plane table. Children take their parent's tenant (a trigger fills it in) and a
-- composite foreign key makes any other value impossible, whoever writes.
alter table connector_definitions add column if not exists tenant_id uuid not null
    default '00000000-0000-0000-0000-000000000001' references ipai_tenants (id);
alter table connector_definitions alter column tenant_id set default ipai.current_tenant();
alter table connector_definitions drop constraint if exists connector_definitions_name_version_key;
alter table connector_definitions drop constraint if exists connector_definitions_name_spec_sha256_key;
alter table connector_definitions add constraint connector_definitions_tenant_name_version_key
    unique (tenant_id, name, version);
alter table connector_definitions add constraint connector_definitions_tenant_name_sha_key
    unique (tenant_id, name, spec_sha256);
alter table connector_definitions add constraint connector_definitions_id_tenant_key unique (id, tenant_id);

alter table connector_instances add column if not exists tenant_id uuid not null
    default '00000000-0000-0000-0000-000000000001' references ipai_tenants (id);
alter table connector_instances alter column tenant_id set default ipai.current_tenant();
alter table connector_instances drop constraint if exists connector_instances_name_env_key;
alter table connector_instances add constraint connector_instances_tenant_name_env_key unique (tenant_id, name, env);
alter table connector_instances add constraint connector_instances_id_tenant_key unique (id, tenant_id);
alter table connector_instances drop constraint if exists connector_instances_definition_id_fkey;
alter table connector_instances add constraint connector_instances_definition_fkey
    foreign key (definition_id, tenant_id) references connector_definitions (id, tenant_id);
alter table connector_instances add column if not exists last_scheduled_for timestamptz;
comment on column connector_instances.last_scheduled_for is
    'The latest cron fire time the scheduler has handled; the next one is the first after it.';

alter table connector_runs add column if not exists tenant_id uuid;
update connector_runs r set tenant_id = i.tenant_id from connector_instances i where i.id = r.instance_id
    and r.tenant_id is null;
alter table connector_runs alter column tenant_id set not null;
alter table connector_runs add constraint connector_runs_id_tenant_key unique (id, tenant_id);
alter table connector_runs drop constraint if exists connector_runs_instance_id_fkey;
alter table connector_runs add constraint connector_runs_instance_fkey
    foreign key (instance_id, tenant_id) references connector_instances (id, tenant_id) on delete cascade;
alter table connector_runs drop constraint if exists connector_runs_definition_id_fkey;
alter table connector_runs add constraint connector_runs_definition_fkey
    foreign key (definition_id, tenant_id) references connector_definitions (id, tenant_id);
alter table connector_runs drop constraint if exists connector_runs_status_check;
alter table connector_runs add constraint connector_runs_status_check
    check (status in ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'deferred', 'skipped'));
alter table connector_runs
    add column if not exists attempt integer not null default 1,
    add column if not exists max_attempts integer not null default 3,
    add column if not exists retry_of uuid references connector_runs (id) on delete set null,
    add column if not exists scheduled_for timestamptz,
    add column if not exists not_before timestamptz,
    add column if not exists worker_id text,
    add column if not exists lease_expires_at timestamptz;
comment on column connector_runs.scheduled_for is 'The cron fire time this run was enqueued for (unique per instance).';
comment on column connector_runs.not_before is 'A queued run is not claimed before this time (retry backoff, quota reset).';
comment on column connector_runs.worker_id is 'The worker that claimed the run (host:pid:tag).';
comment on column connector_runs.lease_expires_at is 'Renewed by every heartbeat; once past, the run is taken as dead.';
create unique index if not exists connector_runs_one_per_slot
    on connector_runs (instance_id, scheduled_for) where scheduled_for is not null;
create index if not exists connector_runs_queue_idx on connector_runs (created_at) where status = 'queued';
create index if not exists connector_runs_lease_idx on connector_runs (lease_expires_at) where status = 'running';

alter table connector_extractions add column if not exists tenant_id uuid;
update connector_extractions e set tenant_id = i.tenant_id from connector_instances i
    where i.id = e.instance_id and e.tenant_id is null;
alter table connector_extractions alter column tenant_id set not null;
alter table connector_extractions drop constraint if exists connector_extractions_instance_id_fkey;
alter table connector_extractions add constraint connector_extractions_instance_fkey
    foreign key (instance_id, tenant_id) references connector_instances (id, tenant_id) on delete cascade;

alter table connector_state add column if not exists tenant_id uuid;
update connector_state s set tenant_id = i.tenant_id from connector_instances i
    where i.id = s.instance_id and s.tenant_id is null;
alter table connector_state alter column tenant_id set not null;
alter table connector_state drop constraint if exists connector_state_instance_id_fkey;
alter table connector_state add constraint connector_state_instance_fkey
    foreign key (instance_id, tenant_id) references connector_instances (id, tenant_id) on delete cascade;

alter table connector_run_logs add column if not exists tenant_id uuid;
update connector_run_logs l set tenant_id = r.tenant_id from connector_runs r
    where r.id = l.run_id and l.tenant_id is null;
alter table connector_run_logs alter column tenant_id set not null;
alter table connector_run_logs drop constraint if exists connector_run_logs_run_id_fkey;
alter table connector_run_logs add constraint connector_run_logs_run_fkey
    foreign key (run_id, tenant_id) references connector_runs (id, tenant_id) on delete cascade;

-- The other links between rows (a run's retry, an extraction's run, a state row's extraction and run) are
-- composite too: no row can point into another tenant, whose deletes would otherwise cascade into it.
alter table connector_runs drop constraint if exists connector_runs_retry_of_fkey;
alter table connector_runs add constraint connector_runs_retry_of_fkey
    foreign key (retry_of, tenant_id) references connector_runs (id, tenant_id) on delete set null (retry_of);
alter table connector_extractions add constraint connector_extractions_id_tenant_key unique (id, tenant_id);
alter table connector_extractions drop constraint if exists connector_extractions_run_id_fkey;
alter table connector_extractions add constraint connector_extractions_run_fkey
    foreign key (run_id, tenant_id) references connector_runs (id, tenant_id) on delete set null (run_id);
alter table connector_state drop constraint if exists connector_state_extraction_id_fkey;
alter table connector_state add constraint connector_state_extraction_fkey
    foreign key (extraction_id, tenant_id) references connector_extractions (id, tenant_id) on delete cascade;
alter table connector_state drop constraint if exists connector_state_run_id_fkey;
alter table connector_state add constraint connector_state_run_fkey
    foreign key (run_id, tenant_id) references connector_runs (id, tenant_id) on delete set null (run_id);

-- Fill tenant_id from the parent row. Runs as the writer; the composite keys above reject a mismatch.
create or replace function ipai.inherit_tenant() returns trigger
    language plpgsql security definer set search_path = ''
    as $$
    begin
        if tg_table_name = 'connector_run_logs' then
            select r.tenant_id into new.tenant_id from public.connector_runs r where r.id = new.run_id;
        elsif tg_table_name = 'connector_instances' then
            select d.tenant_id into new.tenant_id from public.connector_definitions d where d.id = new.definition_id;
        else
            select i.tenant_id into new.tenant_id from public.connector_instances i where i.id = new.instance_id;
        end if;
        return new;
    end
    $$;
do $$
declare
    t text;
begin
    foreach t in array array['connector_instances', 'connector_runs', 'connector_extractions',
                             'connector_state', 'connector_run_logs'] loop
        execute format('drop trigger if exists inherit_tenant on %I', t);
        execute format('create trigger inherit_tenant before insert on %I for each row '
                       'execute function ipai.inherit_tenant()', t);
    end loop;
end $$;
