-- A Vault-compatible `vault` schema for plain PostgreSQL; on Supabase the real Vault is used and nothing
-- here runs. Same interface as Supabase Vault: the table `vault.secrets` (ciphertext only),
-- `vault.create_secret(secret, name, description)`, `vault.update_secret(id, secret, name, description)`
-- and the view `vault.decrypted_secrets`.
--
-- The key is kept outside the database: the client that stores or reads secrets (the `ipai` CLI, a worker)
-- sets it for its own session only (`select set_config('ipai.vault_key', <key>, false)`), from
-- IPAI_VAULT_KEY or the owner-only file <IPAI_HOME>/vault.key. A dump, a backup or another session holds
-- ciphertext alone. The first key used is fingerprinted, so a wrong key fails with that reason.
--
-- Encryption is pgcrypto's `pgp_sym_encrypt` (AES-256, salted and iterated key derivation, integrity
-- check) where the server has pgcrypto. A server without it (the embedded PostgreSQL wheel ships no contrib
-- modules) gets encrypt-then-MAC over the built-in sha256(): HMAC-SHA256 in counter mode as the key stream
-- and an HMAC-SHA256 tag, with separate keys derived for each; each secret records which cipher sealed it.

do $do$
begin
    if to_regclass('vault.secrets') is not null then
        return;  -- Supabase Vault, or this migration on a database restored from another
    end if;
    if exists (select from pg_available_extensions where name = 'pgcrypto') then
        create schema if not exists extensions;
        create extension if not exists pgcrypto with schema extensions;
    end if;

    create schema vault;
    comment on schema vault is 'Vault-compatible secrets for plain PostgreSQL (IPAI Data Connectors).';

    create table vault.secrets (
        id          uuid primary key default gen_random_uuid(),
        name        text unique,
        description text not null default '',
        secret      text not null,
        key_id      uuid,
        nonce       bytea,
        created_at  timestamptz not null default now(),
        updated_at  timestamptz not null default now()
    );
    comment on column vault.secrets.secret is 'Ciphertext: "pgp1:" (pgcrypto) or "hmac1:" (sha256 counter mode).';

    create table vault.key_fingerprint (
        one         boolean primary key default true check (one),
        fingerprint text not null,
        created_at  timestamptz not null default now()
    );

    -- The session's key, checked against the fingerprint of the first key ever used.
    create function vault._key() returns bytea
        language plpgsql volatile security definer set search_path = ''
        as $f$
        declare
            raw text := nullif(current_setting('ipai.vault_key', true), '');
            k bytea;
            fp text;
            stored text;
        begin
            if raw is null then
                raise exception 'the Vault key is not set in this session'
                    using errcode = '28000',
                          hint = 'ipai sets it from IPAI_VAULT_KEY or <IPAI_HOME>/vault.key; give this process the same key as the one that stored the secrets';
            end if;
            k := decode(raw, 'base64');
            if length(k) < 32 then
                raise exception 'the Vault key must be at least 32 bytes (base64)' using errcode = '28000';
            end if;
            fp := encode(sha256(convert_to('ipai vault fingerprint', 'UTF8') || k), 'hex');
            select f.fingerprint into stored from vault.key_fingerprint f;
            if stored is null then
                insert into vault.key_fingerprint (fingerprint) values (fp) on conflict do nothing;
                select f.fingerprint into stored from vault.key_fingerprint f;
            end if;
            if stored <> fp then
                raise exception 'the Vault key of this session is not the key the secrets were stored with'
                    using errcode = '28000',
                          hint = 'set IPAI_VAULT_KEY (or <IPAI_HOME>/vault.key) to the key of the machine that stored them';
            end if;
            return k;
        end
        $f$;

    create function vault._hmac(k bytea, m bytea) returns bytea
        language plpgsql immutable strict set search_path = ''
        as $f$
        declare
            kp bytea := case when length(k) > 64 then sha256(k) else k end;
            ipad bytea;
            opad bytea;
        begin
            kp := kp || decode(repeat('00', 64 - length(kp)), 'hex');
            ipad := kp;
            opad := kp;
            for i in 0..63 loop
                ipad := set_byte(ipad, i, get_byte(kp, i) # 54);  -- 0x36
                opad := set_byte(opad, i, get_byte(kp, i) # 92);  -- 0x5c
            end loop;
            return sha256(opad || sha256(ipad || m));
        end
        $f$;

    -- XOR `data` with the HMAC-SHA256(k, nonce || block number) key stream.
    create function vault._stream(k bytea, nonce bytea, data bytea) returns bytea
        language plpgsql immutable strict set search_path = ''
        as $f$
        declare
            out bytea := data;
            block bytea;
            n int := length(data);
        begin
            for b in 0..((n - 1) / 32) loop
                block := vault._hmac(k, nonce || int4send(b));
                for i in 0..least(31, n - 1 - b * 32) loop
                    out := set_byte(out, b * 32 + i, get_byte(data, b * 32 + i) # get_byte(block, i));
                end loop;
            end loop;
            return out;
        end
        $f$;

    -- Encrypt-then-MAC over the built-in sha256(), for servers without pgcrypto (see the top of this file).
    create function vault._seal_hmac(plain text) returns text
        language plpgsql volatile security definer set search_path = ''
        as $f$
        declare
            k bytea := vault._key();
            nonce bytea := decode(replace(gen_random_uuid()::text, '-', ''), 'hex');  -- 122 random bits
            ct bytea;
        begin
            ct := vault._stream(vault._hmac(k, convert_to('ipai vault encryption', 'UTF8')), nonce,
                                convert_to(plain, 'UTF8'));
            return 'hmac1:' || encode(nonce || vault._hmac(vault._hmac(k, convert_to('ipai vault authentication', 'UTF8')),
                                                           nonce || ct) || ct, 'base64');
        end
        $f$;

    -- The schema pgcrypto is installed in, or null when the server has none.
    create function vault._pgcrypto() returns text
        language sql stable set search_path = ''
        as $f$
            select n.nspname::text from pg_catalog.pg_extension e
              join pg_catalog.pg_namespace n on n.oid = e.extnamespace where e.extname = 'pgcrypto'
        $f$;

    create function vault._seal(plain text) returns text
        language plpgsql volatile security definer set search_path = ''
        as $f$
        declare
            k bytea := vault._key();
            ext text := vault._pgcrypto();
            ct bytea;
        begin
            if ext is null then
                return vault._seal_hmac(plain);
            end if;
            execute format('select %I.pgp_sym_encrypt($1, $2, $3)', ext)
                into ct using plain, encode(k, 'base64'), 'cipher-algo=aes256, compress-algo=0';
            return 'pgp1:' || encode(ct, 'base64');
        end
        $f$;

    create function vault._open(sealed text) returns text
        language plpgsql volatile security definer set search_path = ''
        as $f$
        declare
            k bytea := vault._key();
            ext text := vault._pgcrypto();
            body bytea;
            nonce bytea;
            ct bytea;
            plain text;
        begin
            if sealed like 'pgp1:%' then
                if ext is null then
                    raise exception 'this secret was sealed with pgcrypto, which this server no longer has'
                        using hint = 'install the pgcrypto extension, or store the secret again';
                end if;
                execute format('select %I.pgp_sym_decrypt($1, $2)', ext)
                    into plain using decode(substr(sealed, 6), 'base64'), encode(k, 'base64');
                return plain;
            end if;
            if sealed not like 'hmac1:%' then
                raise exception 'unknown Vault ciphertext format' using errcode = '22023';
            end if;
            body := decode(substr(sealed, 7), 'base64');
            nonce := substring(body from 1 for 16);
            ct := substring(body from 49);
            if substring(body from 17 for 32)
               <> vault._hmac(vault._hmac(k, convert_to('ipai vault authentication', 'UTF8')), nonce || ct) then
                raise exception 'a Vault secret failed its integrity check (altered, or another key)'
                    using errcode = '22023';
            end if;
            return convert_from(vault._stream(vault._hmac(k, convert_to('ipai vault encryption', 'UTF8')),
                                              nonce, ct), 'UTF8');
        end
        $f$;

    create function vault.create_secret(
        new_secret text, new_name text default null, new_description text default '', new_key_id uuid default null
    ) returns uuid
        language plpgsql volatile security definer set search_path = ''
        as $f$
        declare
            id uuid;
        begin
            insert into vault.secrets (name, description, secret, key_id)
            values (new_name, coalesce(new_description, ''), vault._seal(new_secret), new_key_id)
            returning secrets.id into id;
            return id;
        end
        $f$;

    create function vault.update_secret(
        secret_id uuid, new_secret text default null, new_name text default null,
        new_description text default null, new_key_id uuid default null
    ) returns void
        language plpgsql volatile security definer set search_path = ''
        as $f$
        begin
            update vault.secrets s
               set secret = case when new_secret is null then s.secret else vault._seal(new_secret) end,
                   name = coalesce(new_name, s.name),
                   description = coalesce(new_description, s.description),
                   key_id = coalesce(new_key_id, s.key_id),
                   updated_at = now()
             where s.id = secret_id;
        end
        $f$;

    create view vault.decrypted_secrets as
        select s.id, s.name, s.description, s.secret, vault._open(s.secret) as decrypted_secret,
               s.key_id, s.nonce, s.created_at, s.updated_at
          from vault.secrets s;

    alter table vault.secrets enable row level security;
    alter table vault.key_fingerprint enable row level security;
    revoke all on schema vault from public;
    revoke all on all tables in schema vault from public, anon, authenticated;
    revoke all on all functions in schema vault from public, anon, authenticated;
    grant usage on schema vault to service_role;
    grant select on vault.decrypted_secrets to service_role;
    grant select, insert, update, delete on vault.secrets to service_role;
    grant execute on function vault.create_secret(text, text, text, uuid) to service_role;
    grant execute on function vault.update_secret(uuid, text, text, text, uuid) to service_role;
    grant execute on function vault._open(text) to service_role;
end
$do$;
