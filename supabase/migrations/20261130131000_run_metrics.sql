-- What a run measured beyond rows (issue 6): per stream, rows set aside in quarantine by bronze and silver,
-- and what silver merged; `ipai runs --json` and agents read it, alerting needs no log parsing.
alter table connector_runs add column if not exists metrics jsonb not null default '{}'::jsonb;
comment on column connector_runs.metrics is
    'Per stream: {"bronze_quarantined": n, "silver_quarantined": n, "silver_rows": n, "silver_deleted": n}.';
