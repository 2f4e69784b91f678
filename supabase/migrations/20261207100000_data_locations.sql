-- The data plane's registry (issue 15): which connector instance owns each physical table.
--
-- A row is one place data lands (a Delta folder, a Postgres schema.table on one server), owned by one
-- instance. Runs claim their tables before their first write through ipai.claim_locations, which keeps a
-- place another instance owns away from everyone else and names its owner. Gold reads the registry to
-- find every silver table of a source type in a tenant and env. Deleting an instance releases its places
-- (the tables themselves stay until someone drops them).

create table if not exists ipai_data_locations (
    location    text primary key,
    tenant_id   uuid not null,
    instance_id uuid not null,
    env         text not null,
    source_type text not null,
    stream      text not null,
    layer       text not null check (layer in ('bronze', 'silver', 'quarantine')),
    schema_name text,
    table_name  text not null,
    claimed_at  timestamptz not null default now(),
    foreign key (instance_id, tenant_id) references connector_instances (id, tenant_id) on delete cascade
);
create index if not exists ipai_data_locations_by_source
    on ipai_data_locations (tenant_id, env, source_type, layer);
create index if not exists ipai_data_locations_by_instance on ipai_data_locations (instance_id);
comment on table ipai_data_locations is
    'Every physical table (Delta folder or Postgres schema.table) and the one instance that owns it.';

alter table ipai_data_locations enable row level security;
revoke all on table ipai_data_locations from public, anon, authenticated;
grant select on ipai_data_locations to authenticated, ipai_worker;
create policy tenant_read on ipai_data_locations for select to authenticated
    using (tenant_id in (select ipai.user_tenants()));
create policy worker_read on ipai_data_locations for select to ipai_worker using (true);

-- Workers address an instance's tables by its tenant's name.
grant select on ipai_tenants to ipai_worker;
create policy worker_read on ipai_tenants for select to ipai_worker using (true);

create or replace function ipai.claim_locations(p_instance uuid, p_locations jsonb)
returns table (location text, owner text)
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    v_tenant uuid;
    v_env text;
begin
    select i.tenant_id, i.env into v_tenant, v_env from connector_instances i where i.id = p_instance;
    if v_tenant is null then
        raise exception 'no connector instance %', p_instance using errcode = 'P0002';
    end if;
    insert into ipai_data_locations as d
        (location, tenant_id, instance_id, env, source_type, stream, layer, schema_name, table_name)
    select l.location, v_tenant, p_instance, v_env, l.source_type, l.stream, l.layer, l.schema_name, l.table_name
      from jsonb_to_recordset(p_locations)
        as l(location text, source_type text, stream text, layer text, schema_name text, table_name text)
    on conflict on constraint ipai_data_locations_pkey do update
        set source_type = excluded.source_type, stream = excluded.stream, layer = excluded.layer
        where d.instance_id = p_instance;
    return query
        select d.location,
               case when d.tenant_id = v_tenant
                    then format('instance %s (env %s)', i.name, i.env)
                    else 'an instance of another tenant' end
          from ipai_data_locations d
          join connector_instances i on i.id = d.instance_id
         where d.location in (select l.location from jsonb_to_recordset(p_locations) as l(location text))
           and d.instance_id <> p_instance;
end $$;
revoke all on function ipai.claim_locations(uuid, jsonb) from public;
grant execute on function ipai.claim_locations(uuid, jsonb) to ipai_worker, service_role;
comment on function ipai.claim_locations(uuid, jsonb) is
    'Claim places for an instance; returns those another instance owns, with the owner as a person names it.';

-- Each tenant and env has its own bronze and silver schemas (bronze_dev, acme_silver ...: layers/addressing.py),
-- made on first use. Workers may not create schemas: they ask this function, which makes a layer schema owned
-- by ipai_bronze (as bronze and silver are) and nothing else.
create or replace function ipai.create_layer_schema(p_name text) returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
begin
    if p_name !~ '^[a-z][a-z0-9_]*$' or p_name !~ '(^|_)(bronze|silver)(_|$)' or octet_length(p_name) > 63 then
        raise exception 'not the name of a bronze or silver schema: %', p_name using errcode = '22023';
    end if;
    if to_regnamespace(p_name) is null then
        execute format('create schema if not exists %I authorization ipai_bronze', p_name);
        execute format('revoke all on schema %I from public', p_name);
    end if;
end $$;
revoke all on function ipai.create_layer_schema(text) from public;
grant execute on function ipai.create_layer_schema(text) to ipai_worker, ipai_bronze;
