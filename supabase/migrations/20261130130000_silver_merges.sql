-- Silver (issue 6): a finished extraction's bronze rows are merged into silver after its cursor is
-- stored. The time of that merge is kept on the extraction, so a run that stopped in between leaves
-- the merge to the next run, and a stream that turns silver on later gets its whole bronze history.
alter table connector_extractions add column if not exists silver_merged_at timestamptz;
-- The key the source's catalog named when the extraction was planned (a database table's primary key),
-- for streams whose spec declares none: silver merges on it.
alter table connector_extractions add column if not exists primary_key text[];
create index if not exists connector_extractions_unmerged
    on connector_extractions (instance_id, stream, finished_at) where status = 'done' and silver_merged_at is null;
