-- One row per pull request of the repositories every GitHub instance syncs, with its timings.
-- GitHub sends times as ISO 8601 text (bronze keeps them as text): they are read as timestamptz here.
select
    pr.instance,
    pr.repo,
    pr.number,
    pr.id as pull_request_id,
    pr.title,
    pr."user"::jsonb ->> 'login' as author_login,
    pr.state,
    coalesce(pr.draft, false) as is_draft,
    pr.created_at::timestamptz as created_at,
    pr.closed_at::timestamptz as closed_at,
    pr.merged_at::timestamptz as merged_at,
    pr.merged_at is not null as is_merged,
    (extract(epoch from pr.merged_at::timestamptz - pr.created_at::timestamptz) / 3600)::double precision
        as hours_to_merge
from silver.pull_requests pr
where not pr._ipai_deleted
