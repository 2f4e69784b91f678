-- Pull requests opened and merged per repository and week, with time to merge.
-- Weeks are ISO weeks (Monday to Sunday) in UTC; a week with neither an opened nor a merged pull
-- request has no row.
with opened as (
    select instance, repo, date_trunc('week', created_at at time zone 'UTC')::date as week_start,
           count(*) as prs_opened
    from gold.gold_engineering_pull_requests
    group by 1, 2, 3
), merged as (
    select instance, repo, date_trunc('week', merged_at at time zone 'UTC')::date as week_start,
           count(*) as prs_merged,
           percentile_cont(0.5) within group (order by hours_to_merge) as median_hours_to_merge,
           avg(hours_to_merge) as avg_hours_to_merge
    from gold.gold_engineering_pull_requests
    where is_merged
    group by 1, 2, 3
)
select
    coalesce(o.instance, m.instance) as instance,
    coalesce(o.repo, m.repo) as repo,
    coalesce(o.week_start, m.week_start) as week_start,
    coalesce(o.prs_opened, 0) as prs_opened,
    coalesce(m.prs_merged, 0) as prs_merged,
    m.median_hours_to_merge,
    m.avg_hours_to_merge
from opened o
full join merged m on m.instance = o.instance and m.repo = o.repo and m.week_start = o.week_start
