-- Webhook deliveries (FR-039, issue 7): when a run ends, the driver POSTs a signed summary to each URL of the
-- spec's `webhooks` and records every attempt here, so "did n8n hear about run X?" is a query, not a guess.
-- One row per HTTP attempt; the attempts of one delivery share `delivery_id` (the receiver sees it in the
-- `X-IPAI-Delivery` header and dedupes on it). The URL is kept without user info, query or fragment, and
-- nothing here holds the signing secret or the signature.
--
-- Who may do what (as 20261130124000_rls.sql): a Supabase user reads their tenants' deliveries; the worker
-- records and reads them, never changes or deletes one; anon nothing.

create table if not exists webhook_deliveries (
    id           uuid primary key default gen_random_uuid(),
    tenant_id    uuid not null,
    run_id       uuid not null,
    instance_id  uuid not null,
    delivery_id  uuid not null,
    url          text not null,
    event        text not null check (event in ('run.succeeded', 'run.failed', 'run.deferred', 'run.cancelled')),
    attempt      integer not null check (attempt >= 1),
    delivered    boolean not null,
    http_status  integer,
    error        text,
    duration_ms  integer not null check (duration_ms >= 0),
    attempted_at timestamptz not null default clock_timestamp(),
    unique (delivery_id, attempt),
    -- Composite keys: a delivery cannot point into another tenant's runs (whose deletes would cascade here).
    constraint webhook_deliveries_run_fkey
        foreign key (run_id, tenant_id) references connector_runs (id, tenant_id) on delete cascade,
    constraint webhook_deliveries_instance_fkey
        foreign key (instance_id, tenant_id) references connector_instances (id, tenant_id) on delete cascade
);
create index if not exists webhook_deliveries_run_idx on webhook_deliveries (run_id, attempted_at);
comment on table webhook_deliveries is
    'Every attempt to POST a run''s end to a webhook URL: HTTP status or error, time taken (FR-039).';
comment on column webhook_deliveries.url is 'The webhook URL without user info, query string or fragment.';
comment on column webhook_deliveries.error is 'Why the attempt did not deliver (connection error, timeout, HTTP status and body start).';

-- tenant_id comes from the instance, like connector_extractions and connector_state (ipai.inherit_tenant).
drop trigger if exists inherit_tenant on webhook_deliveries;
create trigger inherit_tenant before insert on webhook_deliveries
    for each row execute function ipai.inherit_tenant();

alter table webhook_deliveries enable row level security;
revoke all on table webhook_deliveries from public, anon, authenticated;

grant select on webhook_deliveries to authenticated;
create policy tenant_read on webhook_deliveries for select to authenticated
    using (tenant_id in (select ipai.user_tenants()));

grant select, insert on webhook_deliveries to ipai_worker;
create policy worker_read on webhook_deliveries for select to ipai_worker using (true);
-- A run's deliveries are recorded after the run has ended, so unlike run updates this is not limited to
-- active runs; the composite foreign keys keep each row with its run's tenant.
create policy worker_insert on webhook_deliveries for insert to ipai_worker with check (true);
