-- Cron schedules, evaluated in the database so every path agrees: an instance's schedule is checked when
-- it is written (whoever writes it), `ipai instances` and `connector_list` show next run times, and
-- `ipai.schedule_due()` enqueues due runs. `ipai scheduler` calls it every few seconds; on Supabase,
-- pg_cron can call it instead (`select cron.schedule('ipai', '* * * * *', 'select ipai.schedule_due()')`).
--
-- Syntax (UTC): five fields, minute hour day-of-month month day-of-week; each a `*`, a number, a range
-- `a-b`, a step `*/n`, `a-b/n` or `a/n` (a to the end), or a comma list of those; month names JAN-DEC,
-- day names SUN-SAT, day-of-week 0-7 (0 and 7 are Sunday); the macros @yearly @annually @monthly @weekly
-- @daily @midnight @hourly. When both day fields are restricted a day matching either fires (as croniter
-- does; it does not copy Vixie cron's AND for a field starting with `*`). A day field is unrestricted when
-- it is `*`, or covers its whole range while the other day field is written with a `*` (croniter's rule:
-- `1-31 * 1` fires daily, `1-31 * */2` on even weekdays). On day-of-week, `a/n` runs to Saturday (6).
--
-- Policy for fire times missed while no scheduler ran: one run is enqueued, for the latest missed time;
-- the earlier ones are not run (a sync reads everything since its cursor, so one run catches up) and the
-- run's log says how many were folded into it. A fire time is enqueued at most once per instance (a unique
-- index), however many schedulers run. A schedule counts from when it is set or changed, or the instance
-- re-activated: no catch-up for times before that. A fire time that finds the previous run still active is
-- recorded as a `skipped` run naming it.

create type ipai.cron_spec as (
    minutes      int[],
    hours        int[],
    days         int[],
    months       int[],
    weekdays     int[],
    days_all     boolean,
    weekdays_all boolean
);

create or replace function ipai.cron_value(token text, lo int, hi int, names text[], base int, what text) returns int
    language plpgsql immutable set search_path = ''
    as $$
    declare
        v int;
    begin
        if token ~ '^[0-9]{1,4}$' then
            v := token::int;
        elsif names is not null and array_position(names, upper(token)) is not null then
            v := array_position(names, upper(token)) - 1 + base;
        else
            raise exception '% field: % is not a number%', what, quote_literal(token),
                case when names is null then '' else ' or a name (' || array_to_string(names, ' ') || ')' end;
        end if;
        if v < lo or v > hi then
            raise exception '% field: % is out of range %-%', what, v, lo, hi;
        end if;
        return v;
    end
    $$;

create or replace function ipai.cron_field(field text, lo int, hi int, names text[], base int, what text)
    returns int[]
    language plpgsql immutable set search_path = ''
    as $$
    declare
        part text;
        rng text;
        step int;
        a int;
        b int;
        out int[] := '{}';
    begin
        if field ~ '[#?]' or field ~ '(^|[,/-])([0-9]*l|[0-9]+w|lw)($|[,/-])' then
            raise exception '% field: % uses L, W, # or ?, which are not supported', what, quote_literal(field);
        end if;
        foreach part in array string_to_array(field, ',') loop
            if part = '' then
                raise exception '% field: % has an empty list item', what, quote_literal(field);
            end if;
            if part like '%/%' then
                if part !~ '^[^/]+/[0-9]{1,4}$' then
                    raise exception '% field: % needs a number after /', what, quote_literal(part);
                end if;
                rng := split_part(part, '/', 1);
                step := split_part(part, '/', 2)::int;
                if step = 0 then
                    raise exception '% field: % has a step of 0', what, quote_literal(part);
                end if;
            else
                rng := part;
                step := null;
            end if;
            if rng = '*' then
                a := lo;
                b := hi;
            elsif rng like '%-%' then
                if rng !~ '^[^-]+-[^-]+$' then
                    raise exception '% field: % is not a range a-b', what, quote_literal(rng);
                end if;
                a := ipai.cron_value(split_part(rng, '-', 1), lo, hi, names, base, what);
                b := ipai.cron_value(split_part(rng, '-', 2), lo, hi, names, base, what);
                if a > b then
                    raise exception '% field: range % runs backwards', what, quote_literal(rng);
                end if;
            else
                a := ipai.cron_value(rng, lo, hi, names, base, what);
                b := case when step is null then a else hi end;
                if step is not null and what = 'day-of-week' then
                    a := a % 7;  -- as croniter: 7 is Sunday (0) and `a/n` ends on Saturday
                    b := 6;
                end if;
            end if;
            for v in a..b by coalesce(step, 1) loop
                out := out || v;
            end loop;
        end loop;
        return array(select distinct x from unnest(out) x order by x);
    end
    $$;

-- Parse `expr`; raise with the reason when it is not a valid schedule.
create or replace function ipai.cron_parse(expr text) returns ipai.cron_spec
    language plpgsql immutable set search_path = ''
    as $$
    declare
        e text := lower(btrim(coalesce(expr, '')));
        f text[];
        s ipai.cron_spec;
    begin
        e := case e when '@yearly' then '0 0 1 1 *' when '@annually' then '0 0 1 1 *'
                    when '@monthly' then '0 0 1 * *' when '@weekly' then '0 0 * * 0'
                    when '@daily' then '0 0 * * *' when '@midnight' then '0 0 * * *'
                    when '@hourly' then '0 * * * *' else e end;
        if e like '@%' then
            raise exception 'unknown macro %; known: @yearly @annually @monthly @weekly @daily @midnight @hourly',
                quote_literal(e);
        end if;
        f := regexp_split_to_array(e, '\s+');
        if e = '' or array_length(f, 1) <> 5 then
            raise exception 'needs 5 fields (minute hour day-of-month month day-of-week), got %',
                case when e = '' then 0 else array_length(f, 1) end;
        end if;
        s.minutes := ipai.cron_field(f[1], 0, 59, null, 0, 'minute');
        s.hours := ipai.cron_field(f[2], 0, 23, null, 0, 'hour');
        s.days := ipai.cron_field(f[3], 1, 31, null, 0, 'day-of-month');
        s.months := ipai.cron_field(f[4], 1, 12,
            array['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG', 'SEP', 'OCT', 'NOV', 'DEC'], 1, 'month');
        s.weekdays := array(select distinct x % 7 from unnest(ipai.cron_field(f[5], 0, 7,
            array['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT'], 0, 'day-of-week')) x order by 1);
        s.days_all := f[3] = '*' or (cardinality(s.days) = 31 and strpos(f[5], '*') > 0);
        s.weekdays_all := f[5] = '*' or (cardinality(s.weekdays) = 7 and strpos(f[3], '*') > 0);
        return s;
    end
    $$;

create or replace function ipai.cron_day_ok(s ipai.cron_spec, t timestamp) returns boolean
    language sql immutable set search_path = ''
    as $$
        select case
            when s.days_all and s.weekdays_all then true
            when s.days_all then extract(dow from t)::int = any (s.weekdays)
            when s.weekdays_all then extract(day from t)::int = any (s.days)
            else extract(day from t)::int = any (s.days) or extract(dow from t)::int = any (s.weekdays)
        end
    $$;

-- The first fire time strictly after `after` (UTC), or null when none within five years.
create or replace function ipai.cron_next(expr text, after timestamptz) returns timestamptz
    language plpgsql stable set search_path = ''
    as $$
    declare
        s ipai.cron_spec := ipai.cron_parse(expr);
        t timestamp := date_trunc('minute', after at time zone 'UTC') + interval '1 minute';
        stop timestamp := t + interval '5 years';
    begin
        while t < stop loop
            if not extract(month from t)::int = any (s.months) then
                t := date_trunc('month', t) + interval '1 month';
            elsif not ipai.cron_day_ok(s, t) then
                t := date_trunc('day', t) + interval '1 day';
            elsif not extract(hour from t)::int = any (s.hours) then
                t := date_trunc('hour', t) + interval '1 hour';
            elsif not extract(minute from t)::int = any (s.minutes) then
                t := t + interval '1 minute';
            else
                return t at time zone 'UTC';
            end if;
        end loop;
        return null;
    end
    $$;

-- The latest fire time at or before `at_or_before` (UTC), or null when none within five years.
create or replace function ipai.cron_prev(expr text, at_or_before timestamptz) returns timestamptz
    language plpgsql stable set search_path = ''
    as $$
    declare
        s ipai.cron_spec := ipai.cron_parse(expr);
        t timestamp := date_trunc('minute', at_or_before at time zone 'UTC');
        stop timestamp := t - interval '5 years';
    begin
        while t > stop loop
            if not extract(month from t)::int = any (s.months) then
                t := date_trunc('month', t) - interval '1 minute';
            elsif not ipai.cron_day_ok(s, t) then
                t := date_trunc('day', t) - interval '1 minute';
            elsif not extract(hour from t)::int = any (s.hours) then
                t := date_trunc('hour', t) - interval '1 minute';
            elsif not extract(minute from t)::int = any (s.minutes) then
                t := t - interval '1 minute';
            else
                return t at time zone 'UTC';
            end if;
        end loop;
        return null;
    end
    $$;

-- Why `expr` is not a usable schedule, or null when it is.
create or replace function ipai.cron_error(expr text) returns text
    language plpgsql stable set search_path = ''
    as $$
    begin
        if ipai.cron_next(expr, now()) is null then
            return 'never fires: no date matches it (such as 30 February)';
        end if;
        return null;
    exception when raise_exception then
        return sqlerrm;
    end
    $$;

-- Check a schedule when an instance is written; a new or changed schedule (or re-activation) counts from now.
create or replace function ipai.instance_schedule() returns trigger
    language plpgsql set search_path = ''
    as $$
    declare
        why text;
    begin
        if new.schedule is not null and (tg_op = 'INSERT' or new.schedule is distinct from old.schedule) then
            why := ipai.cron_error(new.schedule);
            if why is not null then
                raise exception 'invalid schedule %: %', quote_literal(new.schedule), why
                    using errcode = '22023',
                          hint = 'five fields in UTC: minute hour day-of-month month day-of-week, e.g. ''0 6 * * *''';
            end if;
        end if;
        if tg_op = 'INSERT' or new.schedule is distinct from old.schedule
           or (new.status = 'active' and old.status <> 'active') then
            new.last_scheduled_for := now();
        end if;
        return new;
    end
    $$;
drop trigger if exists instance_schedule on connector_instances;
create trigger instance_schedule before insert or update of schedule, status on connector_instances
    for each row execute function ipai.instance_schedule();
update connector_instances set last_scheduled_for = now() where last_scheduled_for is null;

-- Enqueue the runs due at `p_now`: see the policy at the top. Returns how many runs it enqueued.
create or replace function ipai.schedule_due(p_now timestamptz default now()) returns integer
    language plpgsql volatile security definer set search_path = ''
    as $$
    declare
        inst record;
        slot timestamptz;
        run uuid;
        active uuid;
        missed int;
        probe timestamptz;
        enqueued int := 0;
    begin
        for inst in
            select i.id, i.tenant_id, i.definition_id, i.schedule, coalesce(i.last_scheduled_for, i.created_at) as since
              from public.connector_instances i
             where i.status = 'active' and i.schedule is not null
               -- skip locked: another scheduler has it; the unique slot index is the real guard. NO KEY: a
               -- concurrent run insert (connector_run) holds the instance's active-run slot and needs KEY
               -- SHARE on the instance for its foreign key; FOR UPDATE would block it while this function
               -- waits on that slot: a deadlock.
               for no key update skip locked
        loop
            slot := ipai.cron_prev(inst.schedule, p_now);
            continue when slot is null or slot <= inst.since;
            missed := 0;
            probe := ipai.cron_next(inst.schedule, inst.since);
            while probe < slot and missed < 1000 loop
                missed := missed + 1;
                probe := ipai.cron_next(inst.schedule, probe);
            end loop;
            run := null;
            active := null;
            -- No row inserted: the slot is taken, or the instance has an active run. When that run ends before it
            -- is read here, nothing is active any more: try the insert again rather than skip naming no run.
            for attempt in 1..3 loop
                insert into public.connector_runs (tenant_id, instance_id, definition_id, status, trigger, scheduled_for)
                values (inst.tenant_id, inst.id, inst.definition_id, 'queued', 'schedule', slot)
                on conflict do nothing
                returning id into run;
                exit when run is not null
                          or exists (select from public.connector_runs r where r.instance_id = inst.id and r.scheduled_for = slot);
                select r.id into active from public.connector_runs r
                 where r.instance_id = inst.id and r.status in ('queued', 'running') limit 1;
                exit when active is not null;
            end loop;
            if run is not null then
                enqueued := enqueued + 1;
                insert into public.connector_run_logs (run_id, level, event, message, fields)
                values (run, 'info', 'run.scheduled',
                        format('scheduled for %s', to_char(slot at time zone 'UTC', 'YYYY-MM-DD HH24:MI "UTC"'))
                        || case when missed > 0 then format('; %s earlier missed fire time(s) folded into this run',
                                                            missed) else '' end,
                        jsonb_build_object('scheduled_for', slot, 'missed', missed));
                perform pg_notify('ipai_run_queued', run::text);
            elsif active is not null then
                insert into public.connector_runs (tenant_id, instance_id, definition_id, status, trigger,
                                                   scheduled_for, ended_at, error)
                values (inst.tenant_id, inst.id, inst.definition_id, 'skipped', 'schedule', slot, now(),
                        format('skipped: run %s was still active at the fire time', active))
                on conflict do nothing;
            end if;
            update public.connector_instances set last_scheduled_for = slot where id = inst.id;
        end loop;
        return enqueued;
    end
    $$;
