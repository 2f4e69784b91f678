-- RPC for agents and CI (FR-023) and secrets (FR-022). Callable through SQL and, on Supabase, through
-- PostgREST (`POST /rest/v1/rpc/connector_run` with the user's JWT). Each returns one JSON object:
--   {"ok": true, ...}  or  {"ok": false, "error": {"code": ..., "message": ..., "details": {...}}}
-- Codes: no_tenant, invalid_spec, invalid_schedule, invalid_argument, not_found, ambiguous, inactive.
-- A run or instance of another tenant gets exactly the answer a missing one gets (no existence leak).
-- All are SECURITY DEFINER with an empty search_path; they act only within the caller's tenants.

-- Source types the platform knows (kept in step with connectors/__init__.py by `ipai db migrate`).
create table if not exists ipai_source_types (name text primary key);
insert into ipai_source_types (name) values ('sample'), ('http'), ('github'), ('ga4') on conflict do nothing;
alter table ipai_source_types enable row level security;
revoke all on ipai_source_types from public, anon, authenticated;
grant select on ipai_source_types to authenticated, ipai_worker;
create policy catalog_read on ipai_source_types for select to authenticated, ipai_worker using (true);

create or replace function ipai.rpc_error(p_code text, p_message text, p_details jsonb default '{}'::jsonb)
    returns jsonb
    language sql immutable set search_path = ''
    as $$ select jsonb_build_object('ok', false, 'error',
                                    jsonb_build_object('code', p_code, 'message', p_message, 'details', p_details)) $$;

-- Tenants whose rows the caller may see through RPC: a user's memberships, else the session's tenant.
create or replace function ipai.visible_tenants() returns setof uuid
    language plpgsql stable security definer set search_path = ''
    as $$
    begin
        if auth.uid() is not null then
            return query select m.tenant_id from public.ipai_tenant_members m where m.user_id = auth.uid();
        else
            return next ipai.current_tenant();
        end if;
    end
    $$;

-- Store a spec as a new definition version (only when its text changed) and point the instance at it.
-- Used by the CLI (`ipai submit`) and connector_create alike.
create or replace function ipai.register(
    p_tenant uuid, p_name text, p_type text, p_text text, p_env text, p_schedule text
) returns table (definition_id uuid, instance_id uuid, version integer)
    language plpgsql volatile security definer set search_path = ''
    as $$
    declare
        digest text := encode(sha256(convert_to(p_text, 'UTF8')), 'hex');
    begin
        perform pg_advisory_xact_lock(hashtext('definition:' || p_tenant || ':' || p_name));
        select d.id, d.version into definition_id, version from public.connector_definitions d
         where d.tenant_id = p_tenant and d.name = p_name and d.spec_sha256 = digest;
        if definition_id is null then
            insert into public.connector_definitions (tenant_id, name, type, yaml_spec, spec_sha256, version)
            select p_tenant, p_name, p_type, p_text, digest, coalesce(max(d.version), 0) + 1
              from public.connector_definitions d where d.tenant_id = p_tenant and d.name = p_name
            returning id, connector_definitions.version into definition_id, version;
        end if;
        insert into public.connector_instances as i (tenant_id, definition_id, name, env, schedule)
        values (p_tenant, definition_id, p_name, p_env, p_schedule)
        on conflict (tenant_id, name, env) do update
            set definition_id = excluded.definition_id, schedule = excluded.schedule, updated_at = now()
        returning i.id into instance_id;
        return next;
    end
    $$;

-- The caller's instance named or identified by p_instance (and p_env when the name is in several).
create or replace function ipai.find_instance(p_instance text, p_env text, out inst public.connector_instances,
                                              out err jsonb)
    language plpgsql stable security definer set search_path = ''
    as $$
    declare
        n int;
    begin
        select count(*) into n from public.connector_instances i
         where i.tenant_id in (select ipai.visible_tenants())
           and (i.id::text = p_instance or i.name = p_instance) and (p_env is null or i.env = p_env);
        if n = 0 then
            err := ipai.rpc_error('not_found', format('no connector instance %s', quote_literal(p_instance)),
                                  jsonb_build_object('instance', p_instance));
        elsif n > 1 then
            err := ipai.rpc_error('ambiguous', format('instance %s exists in several environments; pass p_env',
                                                     quote_literal(p_instance)),
                                  jsonb_build_object('envs', (select jsonb_agg(i.env order by i.env)
                                                              from public.connector_instances i
                                                              where i.tenant_id in (select ipai.visible_tenants())
                                                                and i.name = p_instance)));
        else
            select * into inst from public.connector_instances i
             where i.tenant_id in (select ipai.visible_tenants())
               and (i.id::text = p_instance or i.name = p_instance) and (p_env is null or i.env = p_env);
        end if;
    end
    $$;

create or replace function ipai.find_run(p_run text, out run public.connector_runs, out err jsonb)
    language plpgsql stable security definer set search_path = ''
    as $$
    begin
        if p_run ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
            select * into run from public.connector_runs r
             where r.id = p_run::uuid and r.tenant_id in (select ipai.visible_tenants());
        end if;
        if run.id is null then
            err := ipai.rpc_error('not_found', format('no run %s', quote_literal(p_run)), jsonb_build_object('run_id', p_run));
        end if;
    end
    $$;

create or replace function ipai.run_json(r public.connector_runs) returns jsonb
    language sql stable security definer set search_path = ''
    as $$
        select jsonb_build_object(
            'run_id', r.id, 'instance_id', r.instance_id,
            'instance', (select i.name from public.connector_instances i where i.id = r.instance_id),
            'status', r.status, 'trigger', r.trigger, 'attempt', r.attempt, 'retry_of', r.retry_of,
            'scheduled_for', r.scheduled_for, 'created_at', r.created_at, 'started_at', r.started_at,
            'ended_at', r.ended_at, 'heartbeat_at', r.heartbeat_at, 'rows_processed', r.rows_processed,
            'rows_by_stream', r.rows_by_stream, 'partitions_done', r.partitions_done,
            'partitions_total', r.partitions_total, 'error', r.error, 'deferred_until', r.deferred_until,
            'worker_id', r.worker_id, 'ray_job_id', r.ray_job_id)
    $$;

create or replace function public.connector_list() returns jsonb
    language plpgsql stable security definer set search_path = ''
    as $$
    begin
        return jsonb_build_object('ok', true, 'instances', coalesce((
            select jsonb_agg(jsonb_build_object(
                'instance_id', i.id, 'name', i.name, 'env', i.env, 'status', i.status, 'source_type', d.type,
                'version', d.version, 'schedule', i.schedule,
                'next_run_at', case when i.schedule is not null and i.status = 'active'
                                    then ipai.cron_next(i.schedule, coalesce(i.last_scheduled_for, i.created_at)) end,
                'last_run', (select jsonb_build_object('run_id', r.id, 'status', r.status, 'ended_at', r.ended_at)
                               from public.connector_runs r where r.instance_id = i.id
                              order by r.created_at desc limit 1))
                order by i.name, i.env)
              from public.connector_instances i join public.connector_definitions d on d.id = i.definition_id
             where i.tenant_id in (select ipai.visible_tenants())), '[]'::jsonb));
    end
    $$;

-- Create (or update) an instance from a spec given as JSON. Checked here: the object shape, name, env,
-- source_type and schedule; the worker validates the rest when the run starts (MCP and the CLI validate
-- the whole spec before calling).
create or replace function public.connector_create(p_spec jsonb, p_env text default null, p_schedule text default null)
    returns jsonb
    language plpgsql volatile security definer set search_path = ''
    as $$
    declare
        tenant uuid := ipai.current_tenant();
        spec jsonb := p_spec;
        problems jsonb := '[]'::jsonb;
        why text;
        reg record;
    begin
        if tenant is null then
            return ipai.rpc_error('no_tenant', 'you belong to no tenant, or to several and app_metadata.tenant_id '
                                  'names none of them; ask an admin to add you to one');
        end if;
        if spec is null or jsonb_typeof(spec) <> 'object' then
            return ipai.rpc_error('invalid_spec', 'p_spec must be a JSON object (the connector spec)',
                                  jsonb_build_object('errors', jsonb_build_array(jsonb_build_object(
                                      'path', '', 'message', 'expected an object'))));
        end if;
        if p_env is not null then spec := spec || jsonb_build_object('env', p_env); end if;
        if p_schedule is not null then spec := spec || jsonb_build_object('schedule', p_schedule); end if;
        if coalesce(spec ->> 'name', '') !~ '^[a-z][a-z0-9_]{0,47}$' then
            problems := problems || jsonb_build_object('path', 'name', 'message',
                'required: lower case letters, digits and _, starting with a letter (at most 48)');
        end if;
        if not exists (select from public.ipai_source_types t where t.name = spec ->> 'source_type') then
            problems := problems || jsonb_build_object('path', 'source_type', 'message',
                format('unknown source_type %s; known: %s', coalesce(quote_literal(spec ->> 'source_type'), 'null'),
                       (select string_agg(t.name, ', ' order by t.name) from public.ipai_source_types t)));
        end if;
        if coalesce(spec ->> 'env', 'dev') !~ '^[a-z][a-z0-9_]{0,47}$' then
            problems := problems || jsonb_build_object('path', 'env', 'message',
                'lower case letters, digits and _, starting with a letter');
        end if;
        if jsonb_typeof(spec -> 'schedule') not in ('string', 'null') then
            problems := problems || jsonb_build_object('path', 'schedule', 'message', 'must be a cron string or null');
        elsif spec ->> 'schedule' is not null then
            why := ipai.cron_error(spec ->> 'schedule');
            if why is not null then
                problems := problems || jsonb_build_object('path', 'schedule', 'message',
                    format('invalid schedule %s: %s', quote_literal(spec ->> 'schedule'), why));
            end if;
        end if;
        if jsonb_array_length(problems) > 0 then
            return ipai.rpc_error(
                case when jsonb_array_length(problems) = 1 and problems -> 0 ->> 'path' = 'schedule'
                     then 'invalid_schedule' else 'invalid_spec' end,
                (select string_agg(format('%s: %s', p ->> 'path', p ->> 'message'), '; ')
                   from jsonb_array_elements(problems) p),
                jsonb_build_object('errors', problems));
        end if;
        select * into reg from ipai.register(tenant, spec ->> 'name', spec ->> 'source_type', jsonb_pretty(spec),
                                             coalesce(spec ->> 'env', 'dev'), spec ->> 'schedule');
        return jsonb_build_object('ok', true, 'instance_id', reg.instance_id, 'definition_id', reg.definition_id,
                                  'version', reg.version, 'name', spec ->> 'name', 'env', coalesce(spec ->> 'env', 'dev'),
                                  'next_run_at', case when spec ->> 'schedule' is not null
                                                      then ipai.cron_next(spec ->> 'schedule', now()) end);
    end
    $$;

-- Queue a run of an instance; returns its run id. An instance with a run queued or running already gets
-- that run back (created: false): the database allows one active run per instance.
create or replace function public.connector_run(p_instance text, p_env text default null,
                                                p_full_refresh boolean default false)
    returns jsonb
    language plpgsql volatile security definer set search_path = ''
    as $$
    declare
        f record;
        run uuid;
        existing public.connector_runs;
    begin
        select * into f from ipai.find_instance(p_instance, p_env);
        if f.err is not null then
            return f.err;
        end if;
        if (f.inst).status = 'disabled' then
            return ipai.rpc_error('inactive', format('instance %s is disabled; enable it first', quote_literal(p_instance)),
                                  jsonb_build_object('instance_id', (f.inst).id, 'status', (f.inst).status));
        end if;
        insert into public.connector_runs (tenant_id, instance_id, definition_id, status, trigger, full_refresh)
        values ((f.inst).tenant_id, (f.inst).id, (f.inst).definition_id, 'queued', 'rpc', coalesce(p_full_refresh, false))
        on conflict do nothing
        returning id into run;
        if run is null then
            select * into existing from public.connector_runs r
             where r.instance_id = (f.inst).id and r.status in ('queued', 'running') limit 1;
            if existing.id is null then  -- the active run ended between the insert and this read
                return public.connector_run(p_instance, p_env, p_full_refresh);
            end if;
            return jsonb_build_object('ok', true, 'run_id', existing.id, 'created', false, 'status', existing.status,
                                      'instance_id', (f.inst).id);
        end if;
        insert into public.connector_run_logs (run_id, level, event, message, fields)
        values (run, 'info', 'run.queued', 'queued through RPC',
                jsonb_build_object('full_refresh', coalesce(p_full_refresh, false), 'by', auth.uid()));
        perform pg_notify('ipai_run_queued', run::text);
        return jsonb_build_object('ok', true, 'run_id', run, 'created', true, 'status', 'queued',
                                  'instance_id', (f.inst).id);
    end
    $$;

-- A run by id, or the latest run of an instance.
create or replace function public.connector_status(p_run_id text default null, p_instance text default null,
                                                   p_env text default null)
    returns jsonb
    language plpgsql stable security definer set search_path = ''
    as $$
    declare
        f record;
        r public.connector_runs;
    begin
        if p_run_id is not null then
            select * into f from ipai.find_run(p_run_id);
            if f.err is not null then
                return f.err;
            end if;
            r := f.run;
        elsif p_instance is not null then
            select * into f from ipai.find_instance(p_instance, p_env);
            if f.err is not null then
                return f.err;
            end if;
            select * into r from public.connector_runs x where x.instance_id = (f.inst).id
             order by x.created_at desc limit 1;
            if r.id is null then
                return ipai.rpc_error('not_found', format('instance %s has no runs yet', quote_literal(p_instance)),
                                      jsonb_build_object('instance_id', (f.inst).id));
            end if;
        else
            return ipai.rpc_error('invalid_argument', 'give p_run_id or p_instance');
        end if;
        return jsonb_build_object('ok', true, 'run', ipai.run_json(r));
    end
    $$;

-- A run's structured logs after log id p_after (page with next_after).
create or replace function public.connector_logs(p_run_id text, p_after bigint default 0, p_limit integer default 500)
    returns jsonb
    language plpgsql stable security definer set search_path = ''
    as $$
    declare
        f record;
        lim int := least(greatest(coalesce(p_limit, 500), 1), 5000);
        logs jsonb;
    begin
        select * into f from ipai.find_run(p_run_id);
        if f.err is not null then
            return f.err;
        end if;
        select coalesce(jsonb_agg(jsonb_build_object('id', l.id, 'ts', l.ts, 'level', l.level, 'event', l.event,
                                                     'message', l.message, 'fields', l.fields) order by l.id), '[]')
          into logs
          from (select * from public.connector_run_logs x where x.run_id = (f.run).id and x.id > coalesce(p_after, 0)
                 order by x.id limit lim) l;
        return jsonb_build_object('ok', true, 'run_id', (f.run).id, 'status', (f.run).status, 'logs', logs,
                                  'next_after', coalesce((select max((e ->> 'id')::bigint) from jsonb_array_elements(logs) e),
                                                         coalesce(p_after, 0)));
    end
    $$;

-- Secrets --------------------------------------------------------------------------------------------
-- Each tenant's secrets are Vault entries named 'ipai/<tenant id>/<name>'.

create or replace function public.secret_set(p_name text, p_value text) returns jsonb
    language plpgsql volatile security definer set search_path = ''
    as $$
    declare
        tenant uuid := ipai.current_tenant();
        vault_name text;
        existing uuid;
    begin
        if tenant is null then
            return ipai.rpc_error('no_tenant', 'you belong to no tenant; ask an admin to add you to one');
        end if;
        if coalesce(p_name, '') !~ '^[a-z][a-z0-9_]{0,47}$' then
            return ipai.rpc_error('invalid_argument',
                'secret name must be lower case letters, digits and _, starting with a letter (at most 48)',
                jsonb_build_object('name', p_name));
        end if;
        if coalesce(p_value, '') = '' or length(p_value) > 65536 then
            return ipai.rpc_error('invalid_argument', 'secret value must be 1 to 65536 characters',
                                  jsonb_build_object('name', p_name));
        end if;
        vault_name := 'ipai/' || tenant || '/' || p_name;
        perform pg_advisory_xact_lock(hashtext(vault_name));
        select s.id into existing from vault.secrets s where s.name = vault_name;
        if existing is null then
            perform vault.create_secret(p_value, vault_name, 'IPAI connector secret');
        else
            perform vault.update_secret(existing, p_value);
        end if;
        return jsonb_build_object('ok', true, 'name', p_name, 'created', existing is null);
    end
    $$;

create or replace function public.secret_list() returns jsonb
    language plpgsql stable security definer set search_path = ''
    as $$
    declare
        prefix text := 'ipai/' || ipai.current_tenant() || '/';
    begin
        return jsonb_build_object('ok', true, 'secrets', coalesce((
            select jsonb_agg(jsonb_build_object('name', substr(s.name, length(prefix) + 1), 'updated_at', s.updated_at)
                             order by s.name)
              from vault.secrets s where starts_with(s.name, prefix)), '[]'::jsonb));
    end
    $$;

-- A secret of a run's tenant, for the worker that runs it, while a run of that tenant is running (a
-- credential's actor outlives the run that started it and serves the tenant's next runs). Each read is
-- logged on the run (the name, never the value). Null when the tenant has no such secret.
create or replace function ipai.secret_read(p_run_id uuid, p_name text) returns text
    language plpgsql volatile security definer set search_path = ''
    as $$
    declare
        r public.connector_runs;
        value text;
    begin
        select * into r from public.connector_runs x where x.id = p_run_id;
        if r.id is null or not exists (select from public.connector_runs x
                                        where x.tenant_id = r.tenant_id and x.status = 'running') then
            raise exception 'run % is not running: secrets are read only while a run of their tenant runs', p_run_id
                using errcode = '42501';
        end if;
        select d.decrypted_secret into value from vault.decrypted_secrets d
         where d.name = 'ipai/' || r.tenant_id || '/' || p_name;
        insert into public.connector_run_logs (run_id, level, event, message, fields)
        values (r.id, 'info', 'secret.read',
                format('secret %s %s', p_name, case when value is null then 'is not set' else 'read from the Vault' end),
                jsonb_build_object('secret', p_name, 'found', value is not null));
        return value;
    end
    $$;

-- Replace a secret a running run holds (a rotated OAuth refresh token), before anything uses the new value.
create or replace function ipai.secret_rotate(p_run_id uuid, p_name text, p_value text) returns void
    language plpgsql volatile security definer set search_path = ''
    as $$
    declare
        r public.connector_runs;
        existing uuid;
    begin
        select * into r from public.connector_runs x where x.id = p_run_id;
        if r.id is null or not exists (select from public.connector_runs x
                                        where x.tenant_id = r.tenant_id and x.status = 'running') then
            raise exception 'run % is not running: secrets are rotated only while a run of their tenant runs', p_run_id
                using errcode = '42501';
        end if;
        select s.id into existing from vault.secrets s where s.name = 'ipai/' || r.tenant_id || '/' || p_name;
        if existing is null then
            raise exception 'secret % does not exist for this run''s tenant', p_name using errcode = '42704';
        end if;
        perform vault.update_secret(existing, p_value);
        insert into public.connector_run_logs (run_id, level, event, message, fields)
        values (r.id, 'info', 'secret.rotated', format('secret %s replaced by its rotated value', p_name),
                jsonb_build_object('secret', p_name));
    end
    $$;

revoke all on all functions in schema ipai from public, anon;
revoke all on function public.connector_list(), public.connector_create(jsonb, text, text),
    public.connector_run(text, text, boolean), public.connector_status(text, text, text),
    public.connector_logs(text, bigint, integer), public.secret_set(text, text), public.secret_list()
    from public, anon;
grant execute on function public.connector_list(), public.connector_create(jsonb, text, text),
    public.connector_run(text, text, boolean), public.connector_status(text, text, text),
    public.connector_logs(text, bigint, integer), public.secret_set(text, text), public.secret_list()
    to authenticated, service_role;
grant execute on function ipai.secret_read(uuid, text), ipai.secret_rotate(uuid, text, text)
    to ipai_worker, service_role;
grant execute on function ipai.user_tenants() to authenticated;
grant execute on function ipai.current_tenant() to authenticated, ipai_worker, service_role;
grant execute on function ipai.cron_next(text, timestamptz), ipai.cron_prev(text, timestamptz),
    ipai.cron_error(text), ipai.cron_parse(text), ipai.cron_field(text, int, int, text[], int, text),
    ipai.cron_value(text, int, int, text[], int, text), ipai.cron_day_ok(ipai.cron_spec, timestamp)
    to authenticated, ipai_worker, service_role;
grant execute on function ipai.schedule_due(timestamptz) to ipai_worker, service_role;
