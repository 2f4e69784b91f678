"""Searching every sink for a canary secret: the database, files (Delta logs and parquet, the home folder,
Ray's logs) and captured outputs.

    forms(secret)  the canary as it could appear: raw, URL-quoted, base64 at any alignment
    Sinks          searches the sinks for byte strings; each method returns where it found which one
    ray_logs()     the folder of the session's Ray logs (workers' stdout and stderr among them)

A search that finds nothing proves nothing unless it can see: a test first finds a known string that is not
secret in each sink it searches.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import Collection
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
import ray

TEXT_TYPES = ("text", "varchar", "bpchar", "name", "json", "jsonb", "xml", "_text", "_varchar", "_json", "_jsonb")


def forms(secret: str) -> list[bytes]:
    """The canary as it could appear: raw, URL-quoted, and base64 (standard and URL alphabets) at each of the
    three alignments a value can have inside a larger base64 blob (only the characters that depend on the
    value alone)."""
    raw = secret.encode()
    out = {raw, urllib.parse.quote(secret, safe="").encode(), urllib.parse.quote_plus(secret).encode()}
    for k in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            enc = encode(b"\0" * k + raw)
            first, last = -(-k // 3), (k + len(raw)) // 3  # groups of 3 bytes lying wholly inside the value
            out.add(enc[first * 4:last * 4])
    return sorted(out)


class Sinks:
    """Searches the sinks for byte strings; each method returns where it found which one.

    `tables` are (schema, table) pairs the database search must cover: a check that the column listing
    sees them (a sink the search skipped would otherwise pass silently).
    """

    def __init__(self, db_url: str, texts: dict[str, str], *, tables: Collection[tuple[str, str]] = ()) -> None:
        self.db_url, self.texts, self.tables = db_url, texts, set(tables)

    def database(self, needles: list[bytes]) -> list[str]:
        """Every text, json and bytea column of every table in every schema."""
        hits = []
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            columns = conn.execute(
                "select n.nspname, c.relname, a.attname, t.typname from pg_attribute a"
                " join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace"
                " join pg_type t on t.oid = a.atttypid"
                " where c.relkind in ('r', 'p', 'm') and a.attnum > 0 and not a.attisdropped"
                " and n.nspname <> 'pg_toast' and t.typname = any(%s)",
                (list(TEXT_TYPES) + ["bytea"],)).fetchall()
            by_table: dict[tuple[str, str], list[tuple[str, str]]] = {}
            for schema, table, column, typ in columns:
                by_table.setdefault((schema, table), []).append((column, typ))
            assert set(by_table) >= self.tables, f"the search misses the tables {sorted(self.tables - set(by_table))}"
            for (schema, table), typed in by_table.items():
                # One scan of the table answers every (column, needle) pair.
                pairs = [(column, typ, needle) for column, typ in typed for needle in needles]
                tests: list[str] = []
                params: list[Any] = []
                for column, typ, needle in pairs:
                    if typ == "bytea":
                        tests.append(f'coalesce(bool_or(position(%s::bytea in "{column}") > 0), false)')
                        params.append(needle)
                    else:
                        tests.append(f'coalesce(bool_or(strpos("{column}"::text, %s) > 0), false)')
                        params.append(needle.decode())
                sql = f'select {", ".join(tests)} from "{schema}"."{table}"'
                row: Any = conn.execute(sql, params).fetchone()  # type: ignore[arg-type]  # our own names
                hits += [f"{schema}.{table}.{column} ({needle!r})"
                         for (column, _, needle), found in zip(pairs, row) if found]
        return hits

    def files(self, root: Path, needles: list[bytes], *, skip: tuple[str, ...] = ()) -> list[str]:
        """Every file under `root` but those named in `skip`; parquet files also as decoded values."""
        hits = []
        for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name not in skip):
            data = path.read_bytes()
            if path.suffix == ".parquet":  # compressed pages: search the decoded values and metadata too
                table = pq.read_table(path)
                meta = pq.read_metadata(path).metadata or {}
                data += json.dumps(table.to_pylist(), default=str).encode()
                data += b"".join(k + v for k, v in meta.items())
            hits += [f"{path} ({n!r})" for n in needles if n in data]
        return hits

    def outputs(self, needles: list[bytes]) -> list[str]:
        """The captured outputs given as `texts` (a process's stdout, a CLI's answer)."""
        return [f"{where} ({n!r})" for where, text in self.texts.items() for n in needles if n in text.encode()]


def ray_logs() -> Path:
    """The logs folder of the Ray session this process started (workers' output, raylet, GCS)."""
    node = ray._private.worker._global_node
    assert node is not None, "no Ray session started by this process"
    return Path(node.get_session_dir_path()) / "logs"
