-- Secret reads bound to the claimed run; workers claim only through a function; schedulers take no time;
-- a signed-in session without a user id acts for no tenant (issue 16, holes 1, 6 and 12).
--
-- Before this, `ipai_worker` could insert a run as `running`, or flip any queued run to `running`, and
-- `ipai.secret_read` only asked that *some* run of the secret's tenant be running: a worker could read any
-- tenant's secret at will. Now:
--
--   claims    `ipai.claim_run(worker, lease)` (SECURITY DEFINER) is the only way a run becomes `running` under
--             ipai_worker. It stamps the worker id and the lease, and hands the claimer a random claim token
--             (two gen_random_uuid(), 244 random bits); only its SHA-256 is kept, in `ipai.run_claims`, which
--             no worker may read.
--   secrets   a worker reads and rotates a secret only through `ipai.claimed_secret_read` /
--             `ipai.claimed_secret_rotate`: the run must be `running` with a live lease, and the session must
--             carry that run's claim token in the setting `ipai.claim_token` (sent at connection start, as the
--             Vault key is, never in a statement). The claim's tenant must still be the run's. Each read is
--             logged on the run with the claiming worker's id. `ipai.secret_read` / `secret_rotate` (no claim)
--             stay for the owner and service_role, who may read the Vault directly anyway; ipai_worker may
--             no longer call them.
--   runs      under ipai_worker a run is inserted only as `queued`, as the follow-up of a run of the same
--             instance that ended failed, deferred or cancelled (a retry or a resumption), one follow-up per
--             run; only `running` runs are updated, never back to `queued`/`running` from another state,
--             and only the columns a driver reports (status, progress, lease, outcome): never worker_id,
--             tenant, instance or definition.
--   schedule  `ipai.schedule_due(timestamptz)` is no longer the worker's: it calls `ipai.schedule_due_now()`,
--             which enqueues what is due at the database's clock. A drill with a simulated clock connects
--             as an admin.
--   tenants   `ipai.current_tenant()` answers null for a request that carries JWT claims (PostgREST's shape)
--             without a `sub`, or a session whose role is `authenticated`/`anon` without one: every RPC then
--             answers `no_tenant` or finds nothing, instead of acting for `local`. service_role's claims keep
--             the session's tenant as before.
--
-- The trust boundary, honestly: every worker holds the same role and serves every tenant, so any worker can
-- claim any queued run and read that run's tenant's secrets while it holds the claim; that is the job. What
-- a worker can no longer do is read a tenant's secrets without such a claim: with no queued run, by flipping
-- one, by inserting one, by naming a run another worker holds, or after its lease lapsed. It can still queue
-- the follow-up of any run that ended failed, deferred or cancelled and has none yet (as reaping does, of
-- whatever age) and claim it, and it can end (fail) another worker's running run; both leave rows and logs
-- in the tenant's history. A claim token travels with the run to its Ray tasks, like the Vault key: anything
-- that can read Ray's object store on those hosts can read it. Tenants that must not share workers need
-- separate worker pools and roles.

create table if not exists ipai.run_claims (
    run_id       uuid primary key references public.connector_runs (id) on delete cascade,
    tenant_id    uuid not null,
    worker_id    text not null,
    token_sha256 text not null check (token_sha256 ~ '^[0-9a-f]{64}$'),
    claimed_at   timestamptz not null default now()
);
comment on table ipai.run_claims is
    'Who claimed each run through ipai.claim_run, and the SHA-256 of the claim token that unlocks its secrets.';
alter table ipai.run_claims enable row level security;
revoke all on table ipai.run_claims from public, anon, authenticated, ipai_worker;

-- Claim the oldest due queued run for p_worker_id with a lease of p_lease_s seconds; no row when none is due.
-- SKIP LOCKED: concurrent claimers never take the same run. The token is returned once and never stored.
create or replace function ipai.claim_run(p_worker_id text, p_lease_s double precision)
    returns table (claimed_run uuid, claim_token text)
    language plpgsql volatile security definer set search_path = ''
    as $$
    declare
        token text := replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
        run uuid;
        tenant uuid;
    begin
        if coalesce(p_worker_id, '') = '' or length(p_worker_id) > 200 then
            raise exception 'a worker id of 1 to 200 characters is required to claim a run' using errcode = '22023';
        end if;
        if p_lease_s is null or p_lease_s <= 0 or p_lease_s > 86400 then
            raise exception 'a lease of more than 0 and at most 86400 seconds is required, not %', p_lease_s
                using errcode = '22023';
        end if;
        update public.connector_runs r
           set status = 'running', worker_id = p_worker_id, started_at = now(), heartbeat_at = now(),
               lease_expires_at = now() + make_interval(secs => p_lease_s)
         where r.id = (select q.id from public.connector_runs q
                        where q.status = 'queued' and (q.not_before is null or q.not_before <= now())
                        order by coalesce(q.not_before, q.created_at), q.created_at
                        limit 1 for update skip locked)
        returning r.id, r.tenant_id into run, tenant;
        if run is null then
            return;
        end if;
        insert into ipai.run_claims as c (run_id, tenant_id, worker_id, token_sha256)
        values (run, tenant, p_worker_id, encode(sha256(convert_to(token, 'UTF8')), 'hex'))
        on conflict (run_id) do update
            set tenant_id = excluded.tenant_id, worker_id = excluded.worker_id,
                token_sha256 = excluded.token_sha256, claimed_at = now();
        claimed_run := run;
        claim_token := token;
        return next;
    end
    $$;

-- The run p_run_id when this session holds its live claim (the token in `ipai.claim_token`); raise otherwise.
create or replace function ipai.claimed_run(p_run_id uuid) returns public.connector_runs
    language plpgsql stable security definer set search_path = ''
    as $$
    declare
        token text := nullif(current_setting('ipai.claim_token', true), '');
        r public.connector_runs;
        c ipai.run_claims;
    begin
        select * into r from public.connector_runs x where x.id = p_run_id;
        select * into c from ipai.run_claims k where k.run_id = p_run_id;
        if r.id is null or c.run_id is null or token is null or c.tenant_id <> r.tenant_id
           or c.token_sha256 <> encode(sha256(convert_to(token, 'UTF8')), 'hex') then
            raise exception 'run % is not claimed by this session: a worker reads secrets only for a run it '
                            'claimed (ipai.claim_run), carrying that claim''s token', p_run_id
                using errcode = '42501';
        end if;
        if r.status <> 'running' then
            raise exception 'run % has ended (%): secrets are read only while the claimed run runs', p_run_id, r.status
                using errcode = '42501';
        elsif r.lease_expires_at is null or r.lease_expires_at <= now() then
            raise exception 'the lease of run % lapsed at %: secrets are read only while the claim is live',
                p_run_id, r.lease_expires_at using errcode = '42501';
        end if;
        return r;
    end
    $$;

-- A secret of the claimed run's tenant (null when not set); each read is logged on the run, by name.
create or replace function ipai.claimed_secret_read(p_run_id uuid, p_name text) returns text
    language plpgsql volatile security definer set search_path = ''
    as $$
    declare
        r public.connector_runs := ipai.claimed_run(p_run_id);
        value text;
    begin
        select d.decrypted_secret into value from vault.decrypted_secrets d
         where d.name = 'ipai/' || r.tenant_id || '/' || p_name;
        insert into public.connector_run_logs (run_id, level, event, message, fields)
        values (r.id, 'info', 'secret.read',
                format('secret %s %s', p_name,
                       case when value is null then 'is not set' else 'read from the Vault' end),
                jsonb_build_object('secret', p_name, 'found', value is not null, 'worker', r.worker_id));
        return value;
    end
    $$;

-- Replace a secret of the claimed run's tenant (a rotated OAuth refresh token), before anything uses it.
create or replace function ipai.claimed_secret_rotate(p_run_id uuid, p_name text, p_value text) returns void
    language plpgsql volatile security definer set search_path = ''
    as $$
    declare
        r public.connector_runs := ipai.claimed_run(p_run_id);
        existing uuid;
    begin
        select s.id into existing from vault.secrets s where s.name = 'ipai/' || r.tenant_id || '/' || p_name;
        if existing is null then
            raise exception 'secret % does not exist for this run''s tenant', p_name using errcode = '42704';
        end if;
        perform vault.update_secret(existing, p_value);
        insert into public.connector_run_logs (run_id, level, event, message, fields)
        values (r.id, 'info', 'secret.rotated', format('secret %s replaced by its rotated value', p_name),
                jsonb_build_object('secret', p_name, 'worker', r.worker_id));
    end
    $$;

-- May a worker queue a follow-up of p_parent for p_instance? See `runs` at the top.
create or replace function ipai.may_follow(p_parent uuid, p_instance uuid) returns boolean
    language sql stable security definer set search_path = ''
    as $$
        select exists (select from public.connector_runs p
                        where p.id = p_parent and p.instance_id = p_instance
                          and p.status in ('failed', 'deferred', 'cancelled')
                          and not exists (select from public.connector_runs c where c.retry_of = p.id))
    $$;

drop policy if exists worker_insert on public.connector_runs;
create policy worker_insert on public.connector_runs for insert to ipai_worker
    with check (status = 'queued' and ipai.may_follow(retry_of, instance_id));
drop policy if exists worker_update on public.connector_runs;
create policy worker_update on public.connector_runs for update to ipai_worker
    using (status = 'running') with check (status in ('running', 'succeeded', 'failed', 'deferred', 'cancelled'));
revoke update on public.connector_runs from ipai_worker;
grant update (status, ended_at, error, error_details, timings, deferred_until, metrics, rows_processed,
              partitions_done, partitions_total, rows_by_stream, heartbeat_at, lease_expires_at)
    on public.connector_runs to ipai_worker;

-- The scheduler's entry point: what is due now, by the database's clock.
create or replace function ipai.schedule_due_now() returns integer
    language sql volatile security definer set search_path = ''
    as $$ select ipai.schedule_due(now()) $$;

-- As 20261130122000_tenants.sql, except that a signed-in session without a user id gets no tenant.
create or replace function ipai.current_tenant() returns uuid
    language plpgsql stable security definer set search_path = ''
    as $$
    declare
        uid uuid := auth.uid();
        claims jsonb := auth.jwt();
        chosen text;
        only_one uuid;
    begin
        if uid is not null then
            chosen := claims -> 'app_metadata' ->> 'tenant_id';
            if chosen is not null and exists (select from public.ipai_tenant_members m
                                               where m.user_id = uid and m.tenant_id::text = chosen) then
                return chosen::uuid;
            end if;
            select min(m.tenant_id::text)::uuid into only_one from public.ipai_tenant_members m where m.user_id = uid
            having count(*) = 1;
            return only_one;
        end if;
        if (claims is not null and coalesce(claims ->> 'role', '') <> 'service_role')
           or current_setting('role', true) in ('authenticated', 'anon') then
            return null;  -- a signed-in request with no user: it acts for nobody
        end if;
        return coalesce(nullif(current_setting('ipai.tenant_id', true), '')::uuid,
                        '00000000-0000-0000-0000-000000000001'::uuid);
    end
    $$;

-- As 20261130125000_rpc.sql, without the null tenant a session without one would add.
create or replace function ipai.visible_tenants() returns setof uuid
    language plpgsql stable security definer set search_path = ''
    as $$
    declare
        tenant uuid;
    begin
        if auth.uid() is not null then
            return query select m.tenant_id from public.ipai_tenant_members m where m.user_id = auth.uid();
        else
            tenant := ipai.current_tenant();
            if tenant is not null then
                return next tenant;
            end if;
        end if;
    end
    $$;

revoke all on function ipai.claim_run(text, double precision), ipai.claimed_run(uuid),
    ipai.claimed_secret_read(uuid, text), ipai.claimed_secret_rotate(uuid, text, text),
    ipai.may_follow(uuid, uuid), ipai.schedule_due_now(), ipai.current_tenant(), ipai.visible_tenants()
    from public, anon;
grant execute on function ipai.claim_run(text, double precision), ipai.claimed_secret_read(uuid, text),
    ipai.claimed_secret_rotate(uuid, text, text), ipai.may_follow(uuid, uuid), ipai.schedule_due_now()
    to ipai_worker, service_role;
grant execute on function ipai.current_tenant() to authenticated, ipai_worker, service_role;
revoke execute on function ipai.secret_read(uuid, text), ipai.secret_rotate(uuid, text, text),
    ipai.schedule_due(timestamptz) from ipai_worker;
