-- Secrets are at least 8 characters (issue 16, hole 8). A shorter value cannot be told apart from ordinary
-- text: masking it in logs and errors would mangle them, and not masking it would leak it. The CLI and the
-- Python API refuse such a value before calling (engine/core/secrets.py, MIN_SECRET_LENGTH); this is the same
-- rule for callers of the RPC itself (PostgREST, SQL). The body is 20261130125000_rpc.sql's, with the check.
-- Values already stored are kept; `ipai.secret_rotate` (a provider's rotated token) is not limited.

create or replace function public.secret_set(p_name text, p_value text) returns jsonb
    language plpgsql volatile security definer set search_path = ''
    as $$
    declare
        tenant uuid := ipai.current_tenant();
        vault_name text;
        existing uuid;
    begin
        if tenant is null then
            return ipai.rpc_error('no_tenant', 'you belong to no tenant; ask an admin to add you to one');
        end if;
        if coalesce(p_name, '') !~ '^[a-z][a-z0-9_]{0,47}$' then
            return ipai.rpc_error('invalid_argument',
                'secret name must be lower case letters, digits and _, starting with a letter (at most 48)',
                jsonb_build_object('name', p_name));
        end if;
        if coalesce(length(p_value), 0) < 8 or length(p_value) > 65536 then
            return ipai.rpc_error('invalid_argument',
                'secret value must be 8 to 65536 characters (shorter ones cannot be masked in logs and errors)',
                jsonb_build_object('name', p_name));
        end if;
        vault_name := 'ipai/' || tenant || '/' || p_name;
        perform pg_advisory_xact_lock(hashtext(vault_name));
        select s.id into existing from vault.secrets s where s.name = vault_name;
        if existing is null then
            perform vault.create_secret(p_value, vault_name, 'IPAI connector secret');
        else
            perform vault.update_secret(existing, p_value);
        end if;
        return jsonb_build_object('ok', true, 'name', p_name, 'created', existing is null);
    end
    $$;
