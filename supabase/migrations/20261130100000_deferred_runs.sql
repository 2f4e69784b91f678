-- A run parked because a source quota is spent ends as 'deferred' and says when the quota resets;
-- its extraction stays open, so the next run after that time resumes where it stopped.
alter table connector_runs add column if not exists deferred_until timestamptz;
