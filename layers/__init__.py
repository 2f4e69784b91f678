"""Layers: bronze writers (Delta and Postgres), and later silver merges and gold views."""
