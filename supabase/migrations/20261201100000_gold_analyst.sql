-- Gold (FR-015, US-003): schema `gold` holds the business views `ipai gold apply` creates from
-- layers/gold/, and the `analyst` role (how Superset connects) reads them and nothing else.
--
-- Roles, each created only where it is missing (roles are server-wide; on Supabase too):
--   ipai_gold   owns schema gold and every view in it. Views run with their owner's rights, which is
--               intended: analysts see the curated gold columns without any right on silver. ipai_gold
--               reads silver (granted by `ipai gold apply`) and gold, nothing in the control plane, so no
--               view can hand an analyst more than silver holds. No login.
--   analyst     USAGE on gold and SELECT on its views, present and future (default privileges of
--               ipai_gold; `ipai gold apply` grants them again). Nothing in public (connector_*, tenants),
--               ipai, vault, bronze or silver. Login; give it a password on a real server:
--               `alter role analyst password '...'`.

do $$
declare
    r record;
begin
    for r in select * from (values ('ipai_gold', 'nologin noinherit'), ('analyst', 'login noinherit'))
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

-- So the migrating role (Supabase: postgres) and `ipai gold apply` may act as the views' owner.
do $$
begin
    execute format('grant ipai_gold to %I', current_user);
exception when others then
    null;  -- a superuser needs no grant
end $$;

create schema if not exists gold;
alter schema gold owner to ipai_gold;
revoke all on schema gold from public;
grant usage on schema gold to analyst;
comment on schema gold is 'Business views gold_<domain>_<entity> over silver, documented column by column '
                          '(`ipai gold apply`); read by the analyst role.';
alter default privileges for role ipai_gold in schema gold grant select on tables to analyst;
