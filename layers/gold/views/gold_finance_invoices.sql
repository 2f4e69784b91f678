-- Posted invoices, credit notes and vendor bills of every Odoo instance (streams account_move, res_partner,
-- res_company), with what is still open and how overdue it is as of today (the session's current_date).
-- Amounts are Odoo's *_signed fields, in the company's currency: positive when the partner owes the
-- company (customer invoices, vendor refunds), negative when the company owes (vendor bills, customer
-- credit notes).
select
    m.instance,
    m.id as move_id,
    m.name as number,
    m.move_type,
    case m.move_type when 'out_invoice' then 'customer invoice' when 'out_refund' then 'customer credit note'
                     when 'in_invoice' then 'vendor bill' else 'vendor refund' end as document_type,
    m.company_id,
    c.name as company_name,
    m.commercial_partner_id as partner_id,
    p.name as partner_name,
    m.invoice_date,
    m.invoice_date_due as due_date,
    m.payment_state,
    m.amount_untaxed_signed as amount_untaxed,
    m.amount_total_signed as amount_total,
    m.amount_residual_signed as amount_open,
    case when m.amount_residual_signed <> 0 and m.invoice_date_due < current_date
         then current_date - m.invoice_date_due else 0 end as days_overdue,
    case when m.amount_residual_signed = 0 then 'settled'
         when m.invoice_date_due is null or m.invoice_date_due >= current_date then 'not due'
         when current_date - m.invoice_date_due <= 30 then '1-30'
         when current_date - m.invoice_date_due <= 60 then '31-60'
         when current_date - m.invoice_date_due <= 90 then '61-90'
         else '90+' end as aging_bucket
from silver.account_move m
left join silver.res_partner p on p.instance = m.instance and p.id = m.commercial_partner_id
    and not p._ipai_deleted
left join silver.res_company c on c.instance = m.instance and c.id = m.company_id and not c._ipai_deleted
where not m._ipai_deleted
  and m.state = 'posted'
  and m.move_type in ('out_invoice', 'out_refund', 'in_invoice', 'in_refund')
