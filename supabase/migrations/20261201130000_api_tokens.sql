-- Bearer tokens for agents calling the MCP server over HTTP (issue 7). Each token acts for one tenant: it
-- sees and runs only that tenant's connectors, exactly as the tenant's users do through RPC. Only the
-- token's SHA-256 is stored; the token itself is shown once, when `ipai token create` makes it.
create table if not exists ipai_api_tokens (
    id           uuid primary key default gen_random_uuid(),
    tenant_id    uuid not null references ipai_tenants (id) on delete cascade,
    name         text not null check (name ~ '^[a-z][a-z0-9_-]{0,47}$'),
    token_sha256 text not null unique check (token_sha256 ~ '^[0-9a-f]{64}$'),
    created_at   timestamptz not null default now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
create unique index if not exists ipai_api_tokens_live_name on ipai_api_tokens (tenant_id, name) where revoked_at is null;
comment on table ipai_api_tokens is
    'MCP/HTTP bearer tokens (hash only), one tenant each; admin-managed with `ipai token create|list|revoke`.';

-- Admin-only: no policy lets a Supabase user or a worker read the hashes.
alter table ipai_api_tokens enable row level security;
revoke all on ipai_api_tokens from public, anon, authenticated, ipai_worker;
