-- Daily web traffic per GA4 property, from the `daily_traffic` report of every GA4 instance (dimensions date,
-- country, deviceCategory). Ratios are weighted by sessions: GA4 computes them per report row as a ratio
-- over that row's sessions, so averaging them would weigh a row with 3 sessions like one with 3,000.
select
    t.instance,
    t.property_id,
    t.date::date as date,
    sum(t.sessions)::bigint as sessions,
    sum(t."activeUsers")::bigint as active_users,
    sum(t."screenPageViews")::bigint as page_views,
    sum(t.sessions * t."bounceRate") / nullif(sum(t.sessions), 0) as bounce_rate,
    sum(t.sessions * t."averageSessionDuration") / nullif(sum(t.sessions), 0) as avg_session_duration_s,
    sum(t."screenPageViews")::double precision / nullif(sum(t.sessions), 0) as page_views_per_session,
    (sum(t.sessions) filter (where t."deviceCategory" = 'mobile'))::double precision
        / nullif(sum(t.sessions), 0) as mobile_session_share,
    count(distinct t.country) as countries
from silver.daily_traffic t
where not t._ipai_deleted
group by t.instance, t.property_id, t.date::date
