-- Daily orders and revenue of the sample shop per shipping country and currency, from gold_sales_orders.
-- Cancelled orders are counted apart and bring no revenue or units.
select
    instance,
    order_date,
    shipping_country,
    currency,
    count(*) as orders,
    count(*) filter (where status = 'cancelled') as cancelled_orders,
    count(distinct customer_id) as customers,
    coalesce(sum(units) filter (where status <> 'cancelled'), 0) as units,
    coalesce(sum(amount) filter (where status <> 'cancelled'), 0) as revenue,
    avg(amount) filter (where status <> 'cancelled') as avg_order_value
from gold.gold_sales_orders
group by instance, order_date, shipping_country, currency
