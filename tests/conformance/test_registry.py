"""Every registered connector has a conformance case (tests/conformance/cases.py), and every case a connector."""

from __future__ import annotations

import subprocess
import sys

from connectors import CONNECTORS
from tests.conformance.cases import CASES


def test_every_registered_connector_has_a_conformance_case() -> None:
    missing = sorted(set(CONNECTORS) - set(CASES))
    assert not missing, (f"registered without a conformance case: {', '.join(missing)}; add one to "
                         "tests/conformance/cases.py (its spec, emulator, truth, changes and credential)")
    assert not sorted(set(CASES) - set(CONNECTORS)), "a conformance case for a connector that is not registered"


def test_reading_the_registry_loads_no_connector() -> None:
    """Every `ipai` command reads the registry (source types, `ipai db migrate`): it must not import a connector
    (Ray, aiohttp, polars, ADBC) until a spec needs one."""
    code = ("import sys, connectors; from connectors import CONNECTORS, SOURCE_TYPES; "
            "print(sorted(m for m in sys.modules if m.startswith('connectors.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", f"reading the registry imported {loaded}"
    code = ("import sys; from connectors import CONNECTORS; CONNECTORS['github'].spec_model; "
            "print('connectors.github' in sys.modules, 'connectors.ga4' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split() == ["True", "False"]
