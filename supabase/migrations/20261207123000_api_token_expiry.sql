-- Bearer tokens may expire (issue 16): `ipai token create NAME --expires 30d` sets expires_at, and a request
-- carrying an expired token is refused with a message saying so. Null: the token lives until revoked.
alter table ipai_api_tokens add column if not exists expires_at timestamptz;
comment on column ipai_api_tokens.expires_at is
    'When the token stops being accepted (null: until revoked); set by `ipai token create --expires`.';
