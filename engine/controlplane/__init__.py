"""The control plane in Postgres/Supabase: where things are (`settings`), the database and its migrations
(`db`), tenants and their members (`tenants`), definitions, instances, runs and logs (`records`), a run's
lease (`lease`), the ledger of committed partitions and cursors (`state`), secrets in the Vault (`vault`),
API tokens (`tokens`), the run queue (`queue`: claim, lease expiry, retries), cron (`scheduler`), run-end
notifications (`webhooks`) and the admin side of CDC slots (`cdc`).
"""
