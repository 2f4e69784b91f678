"""PostgreSQL change data capture for the `database` source (`sync_mode: cdc`).

    replication.py  the driver's side: publications and logical replication slots (owned per instance),
                    the exported snapshot of a first run, planning the windows of changes, confirming a
                    window once bronze holds it, dropping an instance's slots
    changes.py      the read task's side: one window of a slot's changes as Arrow batches, with the change
                    columns (`_ipai_op`, `_ipai_lsn`, `_ipai_seq`, `_ipai_unchanged`)
    pgoutput.py     a decoder of PostgreSQL's `pgoutput` messages, and their text values as Arrow

Imports run one way: changes -> replication -> pgoutput; the table stream (connectors/database/stream.py)
calls into both, and neither imports it.
"""
