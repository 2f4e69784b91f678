-- One row per order of every sample shop instance, joined to its customer and totalled over its lines
-- (within the same instance: `silver.<stream>` is that stream of every instance, with an `instance` column).
with lines as (
    select instance, order_id, count(*) as line_count, sum(quantity) as units, sum(quantity * unit_price) as line_total
    from silver.order_lines
    where not _ipai_deleted
    group by instance, order_id
)
select
    o.instance,
    o.id as order_id,
    o.created_at,
    (o.created_at at time zone 'UTC')::date as order_date,
    o.status,
    o.customer_id,
    c.name as customer_name,
    c.country as customer_country,
    c.tier as customer_tier,
    o.shipping_country,
    o.shipping_country <> c.country as is_cross_border,
    o.currency,
    o.amount,
    coalesce(l.line_count, 0) as line_count,
    coalesce(l.units, 0) as units,
    coalesce(l.line_total, 0) as line_total
from silver.orders o
left join silver.customers c on c.instance = o.instance and c.id = o.customer_id and not c._ipai_deleted
left join lines l on l.instance = o.instance and l.order_id = o.id
where not o._ipai_deleted
