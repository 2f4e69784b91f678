"""Gold: business views (`views/*.sql` with their column docs in `views/*.yaml`), validated and loaded by
`definitions` and applied to Postgres by `apply` (`ipai gold apply`, and after a run's silver merges).
"""
