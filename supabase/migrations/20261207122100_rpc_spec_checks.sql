-- connector_create (RPC) refuses what the Python loader refuses before anything is stored (issue 16, holes 4
-- and 7): a spec over 1 MiB or nested more than 64 levels (engine/core/yamlfile.py), and a URL carrying a
-- password in clear (engine/core/urls.py: `user:password@`, also with `/` or `@` in the password, and
-- password-like parameters such as ?password=, sslpassword=, pwd=, key=, ...token=, ...secret=). Before, such
-- a spec was stored in the definition (a clear password with it) and refused only when a worker ran it.
-- JSON has no aliases; a JSON text nested thousands deep is refused by PostgreSQL's own parser (stack depth).
-- The function body is 20261130125000_rpc.sql's with those checks added before the others.

-- A problem {path, message} for every string of the spec that is a URL (scheme://) carrying a credential;
-- the value itself is never echoed. (A libpq key=value string is left to the worker's check.)
create or replace function ipai.spec_credentials(p_spec jsonb) returns jsonb
    language sql immutable set search_path = ''
    as $$
    select coalesce(jsonb_agg(jsonb_build_object(
               'path', '',
               'message', 'a URL in the spec carries a password or a credential parameter; store the whole '
                          'URL as a secret (`ipai secret set NAME`) and write url: {secret: NAME}')), '[]'::jsonb)
      from jsonb_path_query(p_spec, 'strict $.**') v
     where jsonb_typeof(v) = 'string'
       and ((v #>> '{}') ~* '^[a-z][a-z0-9+.-]*://[^/?#@:]*:[^@]+@'
            or (v #>> '{}') ~* '^[a-z][a-z0-9+.-]*://.*[?&;](ssl)?pass(word|wd)?=[^&#]'
            or (v #>> '{}') ~* ('^[a-z][a-z0-9+.-]*://.*[?&;](pwd|key|[a-z0-9_]*'
                                || '(secret|token|apikey|api_key|access_key|private_key|password))=[^&#]')
            -- a percent-encoded parameter name (?pass%77ord=) may spell any of those: refused alike
            or (v #>> '{}') ~* '^[a-z][a-z0-9+.-]*://.*[?&;][^=&#]*%[0-9a-f]{2}[^=&#]*=[^&#]')
    $$;

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
        if octet_length(spec::text) > 1048576 then
            return ipai.rpc_error('invalid_spec', format('the spec is %s bytes; a spec may be at most 1 MiB '
                                  '(1,048,576 bytes)', octet_length(spec::text)),
                                  jsonb_build_object('errors', jsonb_build_array(jsonb_build_object(
                                      'path', '', 'message', 'at most 1 MiB'))));
        end if;
        if jsonb_path_exists(spec, 'strict $.**{64}') then
            return ipai.rpc_error('invalid_spec', 'the spec is nested more than 64 levels deep',
                                  jsonb_build_object('errors', jsonb_build_array(jsonb_build_object(
                                      'path', '', 'message', 'nested more than 64 levels deep'))));
        end if;
        problems := ipai.spec_credentials(spec);
        if jsonb_array_length(problems) > 0 then
            return ipai.rpc_error('invalid_spec',
                (select string_agg(format('%s: %s', p ->> 'path', p ->> 'message'), '; ')
                   from jsonb_array_elements(problems) p),
                jsonb_build_object('errors', problems));
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

revoke all on function ipai.spec_credentials(jsonb) from public;
