"""Waiting for a state: poll until it holds, fail naming it at a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

WAIT_S = 120.0  # deadline for a state to be reached: far above what any step takes, so only a hang fails


def wait_for(what: str, check: Callable[[], Any], *, timeout: float = WAIT_S, every: float = 0.2,
             alive: Callable[[], None] = lambda: None) -> Any:
    """Poll `check()` until it returns something truthy; fail naming `what` at the deadline. `alive()` may
    raise to fail early (a process that died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        alive()
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")
