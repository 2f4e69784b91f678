-- Silver belongs to the layers' owner role, as bronze does (20261130122000_tenants.sql): whoever merges a
-- run's silver (a worker connected as ipai_worker, the CLI as the database owner) acts as `ipai_bronze`
-- (layers/postgres.py load_as_layer_owner), so every silver table has one owner that all of them can alter.
-- Before this, a worker could not create the schema or its tables (permission denied), and tables the CLI
-- had made were the CLI user's.
create schema if not exists silver;
alter schema silver owner to ipai_bronze;
revoke all on schema silver from public;
do $$
declare
    t record;
begin
    for t in select c.oid::regclass as rel from pg_class c join pg_namespace n on n.oid = c.relnamespace
              where n.nspname = 'silver' and c.relkind in ('r', 'p', 'S', 'v')
    loop
        execute format('alter table %s owner to ipai_bronze', t.rel);
    end loop;
end $$;
do $$
begin
    execute 'grant usage on schema silver to ipai_gold';  -- gold views read silver (layers/gold/apply.py)
exception when undefined_object then
    null;
end $$;
