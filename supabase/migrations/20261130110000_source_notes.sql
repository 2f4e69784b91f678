-- Facts a source gave about a committed partition, kept for the next run: today the ETag of a partition
-- read in one page, sent back as If-None-Match so an unchanged resource costs a 304 and no quota.
alter table connector_state drop constraint if exists connector_state_kind_check;
alter table connector_state add constraint connector_state_kind_check
    check (kind in ('partition', 'cursor', 'etag'));
