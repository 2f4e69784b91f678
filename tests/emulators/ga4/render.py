"""Render a page of a GA4 report as the `RunReportResponse` JSON text (../shared/api-contracts/ga4.md section 4).

Rows are assembled from pre-escaped `{"value":...}` cells rather than built as dicts and dumped: a page of
10,000 rows renders in a few milliseconds. Every value is a string; integers print as integers and other
metrics as the shortest decimal that reads back as the same float ("0.25", "12.5", "0" for 0.0).
Empty repeated fields and a zero `rowCount` are left out, as proto3 JSON does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from tests.emulators.ga4.data import Report, World, cell, date_cell
from tests.emulators.ga4.schema import DATE_DIMENSIONS, METRICS

KIND = "analyticsData#runReport"


def _decimal(value: float) -> str:
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


def _dimension_cells(world: World, name: str, codes: np.ndarray, range_names: Sequence[str]) -> list[str]:
    if name == "dateRange":
        cells = [cell(n) for n in range_names]
        return [cells[c] for c in codes.tolist()]
    if name in DATE_DIMENSIONS:
        distinct, inverse = np.unique(codes, return_inverse=True)
        cells = [date_cell(name, c) for c in distinct.tolist()]
        return [cells[i] for i in inverse.tolist()]
    cells = world.coding(name).cells
    return [cells[c] for c in codes.tolist()]


def _metric_cells(values: np.ndarray) -> list[str]:
    if values.dtype.kind == "i":
        return ['{"value":"%d"}' % v for v in values.tolist()]
    return ['{"value":"%s"}' % _decimal(v) for v in values.tolist()]


def rows_json(report: Report, world: World, dimensions: Sequence[str], range_names: Sequence[str], lo: int,
              hi: int) -> str:
    """Report rows `lo` to `hi` (exclusive) as the comma-separated inside of the `rows` array."""
    names = list(dimensions) + (["dateRange"] if len(report.codes) > len(dimensions) else [])
    dims = [_dimension_cells(world, n, c[lo:hi], range_names) for n, c in zip(names, report.codes)]
    metrics = [_metric_cells(v[lo:hi]) for v in report.values]
    if dims and metrics:
        return ",".join('{"dimensionValues":[' + ",".join(d) + '],"metricValues":[' + ",".join(m) + "]}"
                        for d, m in zip(zip(*dims), zip(*metrics)))
    if dims:
        return ",".join('{"dimensionValues":[' + ",".join(d) + "]}" for d in zip(*dims))
    return ",".join('{"metricValues":[' + ",".join(m) + "]}" for m in zip(*metrics))


def response_json(report: Report, world: World, *, dimensions: Sequence[str], metrics: Sequence[str],
                  range_names: Sequence[str], offset: int, limit: int, metadata: dict[str, Any],
                  quota: dict[str, Any] | None) -> str:
    """The whole response body for the page [offset, offset + limit) of `report`."""
    headers = [{"name": n} for n in dimensions] + ([{"name": "dateRange"}] if len(range_names) > 1 else [])
    parts = []
    if headers:
        parts.append('"dimensionHeaders":' + json.dumps(headers, separators=(",", ":")))
    if metrics:
        parts.append('"metricHeaders":' + json.dumps([{"name": n, "type": METRICS[n].type} for n in metrics],
                                                     separators=(",", ":")))
    lo, hi = min(offset, report.rows), min(report.rows, offset + limit)
    if hi > lo:
        parts.append('"rows":[' + rows_json(report, world, dimensions, range_names, lo, hi) + "]")
    if report.rows:
        # An empty report has no rowCount at all (proto3 leaves out zeros): plausible/analytics PR #4094.
        parts.append(f'"rowCount":{report.rows}')
    parts.append('"metadata":' + json.dumps(metadata, separators=(",", ":"), ensure_ascii=False))
    if quota is not None:
        parts.append('"propertyQuota":' + json.dumps(quota, separators=(",", ":")))
    parts.append(f'"kind":"{KIND}"')
    return "{" + ",".join(parts) + "}"
