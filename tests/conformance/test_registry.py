"""Every registered connector has a conformance case (tests/conformance/cases.py), and every case a connector."""

from __future__ import annotations

from connectors import CONNECTORS
from tests.conformance.cases import CASES


def test_every_registered_connector_has_a_conformance_case() -> None:
    missing = sorted(set(CONNECTORS) - set(CASES))
    assert not missing, (f"registered without a conformance case: {', '.join(missing)}; add one to "
                         "tests/conformance/cases.py (its spec, emulator, truth, changes and credential)")
    assert not sorted(set(CASES) - set(CONNECTORS)), "a conformance case for a connector that is not registered"
