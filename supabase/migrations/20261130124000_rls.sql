-- Row-level security on every control-plane table (NFR-007). Who may do what:
--
--   anon            nothing.
--   authenticated   (a Supabase user) sees the rows of the tenants they belong to (ipai_tenant_members);
--                   creates, changes and deletes their definitions and instances; reads their runs,
--                   extractions, state and logs; starts runs and stores secrets only through the RPC
--                   functions. Claims they can edit themselves (user_metadata) count for nothing.
--   ipai_worker     (workers and schedulers) reads definitions and instances of every tenant, claims and
--                   updates runs still queued or running (a finished run is history: no role but an
--                   admin changes it), writes extractions, state and logs; never deletes; reads a secret
--                   only through ipai.secret_read for a run that is running; no tenant tables, no Vault.
--   service_role    bypasses RLS (as on Supabase): admin tools.
-- The table owner (the migrating role, the local CLI) is not subject to RLS.

do $$
declare
    t text;
begin
    foreach t in array array['ipai_tenants', 'ipai_tenant_members', 'connector_definitions', 'connector_instances',
                             'connector_runs', 'connector_extractions', 'connector_state', 'connector_run_logs',
                             'ipai_schema_migrations'] loop
        execute format('alter table %I enable row level security', t);
        execute format('revoke all on table %I from public, anon, authenticated', t);
    end loop;
end $$;
revoke all on sequence connector_run_logs_id_seq from public, anon, authenticated;

grant usage on schema public to authenticated, ipai_worker, service_role;
grant usage on schema ipai to authenticated, ipai_worker, service_role;
grant execute on function ipai.user_tenants() to authenticated;
grant execute on function ipai.current_tenant() to authenticated, ipai_worker, service_role;

-- authenticated ---------------------------------------------------------------------------------------
grant select on ipai_tenants, ipai_tenant_members to authenticated;
grant select, insert, update, delete on connector_definitions, connector_instances to authenticated;
grant select on connector_runs, connector_extractions, connector_state, connector_run_logs to authenticated;

create policy tenant_read on ipai_tenants for select to authenticated
    using (id in (select ipai.user_tenants()));
create policy tenant_read on ipai_tenant_members for select to authenticated
    using (tenant_id in (select ipai.user_tenants()));
do $$
declare
    t text;
begin
    foreach t in array array['connector_definitions', 'connector_instances'] loop
        execute format('create policy tenant_all on %I for all to authenticated '
                       'using (tenant_id in (select ipai.user_tenants())) '
                       'with check (tenant_id in (select ipai.user_tenants()))', t);
    end loop;
    foreach t in array array['connector_runs', 'connector_extractions', 'connector_state', 'connector_run_logs'] loop
        execute format('create policy tenant_read on %I for select to authenticated '
                       'using (tenant_id in (select ipai.user_tenants()))', t);
    end loop;
end $$;

-- ipai_worker ------------------------------------------------------------------------------------------
grant select on connector_definitions, connector_instances to ipai_worker;
grant select, insert, update on connector_runs, connector_extractions, connector_state to ipai_worker;
grant select, insert on connector_run_logs to ipai_worker;
grant usage on sequence connector_run_logs_id_seq to ipai_worker;

create policy worker_read on connector_definitions for select to ipai_worker using (true);
create policy worker_read on connector_instances for select to ipai_worker using (true);
create policy worker_read on connector_runs for select to ipai_worker using (true);
create policy worker_insert on connector_runs for insert to ipai_worker
    with check (status in ('queued', 'running', 'skipped'));
create policy worker_update on connector_runs for update to ipai_worker
    using (status in ('queued', 'running')) with check (true);
do $$
declare
    t text;
begin
    foreach t in array array['connector_extractions', 'connector_state'] loop
        execute format('create policy worker_read on %I for select to ipai_worker using (true)', t);
        execute format('create policy worker_insert on %I for insert to ipai_worker with check (true)', t);
        execute format('create policy worker_update on %I for update to ipai_worker using (true) with check (true)', t);
    end loop;
end $$;
create policy worker_read on connector_run_logs for select to ipai_worker using (true);
create policy worker_insert on connector_run_logs for insert to ipai_worker with check (true);

-- Functions: nothing executable by PUBLIC or anon unless granted. Every migration that adds a function
-- revokes it explicitly (tests/controlplane/test_catalog.py checks the catalog); the database-wide default
-- privileges are left alone, since on Supabase the database is the user's project and other apps' too.
revoke all on all functions in schema ipai from public, anon;
grant execute on function ipai.cron_next(text, timestamptz), ipai.cron_prev(text, timestamptz),
    ipai.cron_error(text), ipai.cron_parse(text), ipai.cron_field(text, int, int, text[], int, text),
    ipai.cron_value(text, int, int, text[], int, text), ipai.cron_day_ok(ipai.cron_spec, timestamp)
    to authenticated, ipai_worker, service_role;
grant execute on function ipai.schedule_due(timestamptz) to ipai_worker, service_role;

-- Bronze: written by runs (as ipai_bronze), never by API users.
grant usage, create on schema bronze to ipai_bronze;
revoke all on all tables in schema bronze from public, anon, authenticated;
alter default privileges in schema bronze revoke all on tables from public;
