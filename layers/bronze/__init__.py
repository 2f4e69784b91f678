"""Bronze: the writer actor (`writer`) that commits batches of partitions to Delta (`delta`) and Postgres
(`postgres`) idempotently, after schema drift is decided once per batch (`drift`).
"""
