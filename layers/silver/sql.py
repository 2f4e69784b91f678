"""The SQL both silver destinations share: which version is newer, and what a matched row takes."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def newer_sql(columns: Sequence[str], source: str, target: str, quote: Callable[[str], str]) -> str:
    """SQL that is true when `source`'s version is strictly greater than `target`'s (nulls lowest).

    Strictly: a replayed row (the same version) leaves the stored one as it is, system columns included.
    """
    if not columns:
        return "false"
    c = quote(columns[0])
    s, t = f"{source}.{c}", f"{target}.{c}"
    greater = f"({s} > {t} OR ({t} IS NULL AND {s} IS NOT NULL))"
    if len(columns) == 1:
        return greater
    return f"({greater} OR (({s} IS NOT DISTINCT FROM {t}) AND {newer_sql(columns[1:], source, target, quote)}))"


def assignments(stored: Sequence[str], key: Sequence[str], source_columns: Sequence[str], *,
                quote: Callable[[str], str]) -> dict[str, str]:
    """What each column of a matched row becomes: the source's value, except that a soft delete keeps the
    last known values, and a column the change did not send (`_ipai_unchanged`, TOAST) keeps silver's."""
    unsent = "_ipai_unchanged" in source_columns
    out = {}
    for c in stored:
        if c in key:
            continue
        q = quote(c)
        if c.startswith("_ipai_"):
            out[q] = f"s.{q}"
            continue
        keep = ["s.\"_ipai_deleted\""]
        if unsent:
            name = c.replace("'", "''")
            keep.append(f"strpos(concat(',', s.\"_ipai_unchanged\", ','), ',{name},') > 0")
        out[q] = f"CASE WHEN {' OR '.join(keep)} THEN t.{q} ELSE s.{q} END"
    return out
