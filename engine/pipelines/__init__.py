"""Pipelines: a YAML DAG of connector runs and gold refreshes (`definition`), recorded in `pipeline_runs`
(`records`), run with ready steps queued together (`runner`) on local or fleet workers (`workers`).
"""
