-- Supabase compatibility. On hosted Supabase every object here already exists and is left alone: each
-- one is created only where it is missing. On plain PostgreSQL (the embedded server, a test server) this
-- gives later migrations what they rely on:
--   roles anon, authenticated, service_role (as Supabase has them: no login, service_role bypasses RLS);
--   auth.uid(), auth.jwt(), auth.role(), reading `request.jwt.claims` exactly as PostgREST sets it
--   (`set local role authenticated; select set_config('request.jwt.claims', '<claims json>', true)`),
--   and the older per-claim settings (`request.jwt.claim.sub`) that Supabase's own functions also read.
-- The Vault-compatible schema is in the next migration.

do $$
declare
    r record;
begin
    for r in select * from (values ('anon', 'nologin noinherit'),
                                   ('authenticated', 'nologin noinherit'),
                                   ('service_role', 'nologin noinherit bypassrls')) as t(name, options)
    loop
        if not exists (select from pg_roles where rolname = r.name) then
            begin
                execute format('create role %I %s', r.name, r.options);
            exception when duplicate_object or unique_violation then
                null;  -- another database of this server created it a moment ago; roles are server-wide
            end;
        end if;
    end loop;
end $$;

create schema if not exists auth;
grant usage on schema auth to anon, authenticated, service_role;

do $$
begin
    if to_regprocedure('auth.jwt()') is null then
        create function auth.jwt() returns jsonb
            language sql stable
            as $f$
                select coalesce(
                    nullif(current_setting('request.jwt.claim', true), ''),
                    nullif(current_setting('request.jwt.claims', true), '')
                )::jsonb
            $f$;
        comment on function auth.jwt() is
            'The JWT claims of the request, as PostgREST sets them (plain-Postgres stand-in for Supabase''s).';
    end if;
    if to_regprocedure('auth.uid()') is null then
        create function auth.uid() returns uuid
            language sql stable
            as $f$
                select nullif(coalesce(
                    nullif(current_setting('request.jwt.claim.sub', true), ''),
                    nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
                ), '')::uuid
            $f$;
        comment on function auth.uid() is
            'The signed-in user''s id (the sub claim), or null (plain-Postgres stand-in for Supabase''s).';
    end if;
    if to_regprocedure('auth.role()') is null then
        create function auth.role() returns text
            language sql stable
            as $f$
                select coalesce(
                    nullif(current_setting('request.jwt.claim.role', true), ''),
                    nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'
                )
            $f$;
    end if;
end $$;
