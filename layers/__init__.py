"""The layers data passes through after a read: `bronze` (append-only, exactly once per partition, Delta and
Postgres), `silver` (one row per key, merged from bronze), `gold` (business views per domain, with column
docs), and `lakehouse` (upkeep and export of Delta tables). `postgres` and `delta` hold what every layer
shares: Arrow into Postgres, and where a table lives in the lakehouse.

Layers import only `engine.core`; the run loop calls them.
"""
