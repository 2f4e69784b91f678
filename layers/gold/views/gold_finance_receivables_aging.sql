-- Receivables aging: what each customer still owes each company, by how overdue it is, from the open
-- customer invoices and credit notes of gold_finance_invoices (credit notes reduce what is owed).
select
    instance,
    company_id,
    company_name,
    partner_id,
    partner_name,
    count(*) as open_documents,
    sum(amount_open) as open_amount,
    coalesce(sum(amount_open) filter (where aging_bucket = 'not due'), 0) as not_due,
    coalesce(sum(amount_open) filter (where aging_bucket = '1-30'), 0) as overdue_1_30,
    coalesce(sum(amount_open) filter (where aging_bucket = '31-60'), 0) as overdue_31_60,
    coalesce(sum(amount_open) filter (where aging_bucket = '61-90'), 0) as overdue_61_90,
    coalesce(sum(amount_open) filter (where aging_bucket = '90+'), 0) as overdue_90_plus,
    min(due_date) as oldest_due_date,
    max(days_overdue) as max_days_overdue
from gold.gold_finance_invoices
where move_type in ('out_invoice', 'out_refund') and amount_open <> 0
group by instance, company_id, company_name, partner_id, partner_name
