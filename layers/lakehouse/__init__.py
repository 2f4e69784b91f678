"""The Delta lakehouse's upkeep (`upkeep`: compact, vacuum, checkpoint, log cleanup) and export (`export`:
a table to plain Parquet files for consumers that cannot read Delta).
"""
