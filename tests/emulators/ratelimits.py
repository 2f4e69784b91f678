"""Per-credential rate limits as GitHub reports them: a primary quota window and "wait until" blocks.

Every API response carries `x-ratelimit-{limit,remaining,used,reset,resource}`. Without the
`primary_limit` fault the quota is huge and never enforced (so a connector that paces itself by
`x-ratelimit-remaining` never stalls a test); with it, an exhausted credential is refused until the window
resets. A refusal (primary or secondary) records a block: the time until which that credential was told to
wait. A request arriving inside a block is refused again and, unless it arrived within the in-flight grace
after the block was issued, counted as a violation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tests.emulators.faults import PrimaryLimit

UNENFORCED = PrimaryLimit(limit=1_000_000, window_s=3600.0)


@dataclass
class Window:
    reset: int  # epoch seconds, as sent in x-ratelimit-reset; the window rolls over at exactly this time
    used: int = 0


@dataclass
class Block:
    status: int
    issued_at: float
    until: float
    kind: str  # "storm" or "primary"
    advertise: bool = False  # repeat a Retry-After header when refusing again (if the first refusal had one)


class RateLimits:
    """Quota windows and blocks for each credential (None stands for unauthenticated requests)."""

    def __init__(self) -> None:
        self._config = UNENFORCED
        self._enforced = False
        self._windows: dict[str | None, Window] = {}
        self._blocks: dict[str | None, Block] = {}

    def configure(self, limit: PrimaryLimit | None) -> None:
        """Switch to `limit` (None: the unenforced default) and start every credential afresh."""
        self._config = limit or UNENFORCED
        self._enforced = limit is not None
        self._windows.clear()
        self._blocks.clear()

    def _window(self, credential: str | None, now: float) -> Window:
        window = self._windows.get(credential)
        if window is None or now >= window.reset:
            window = Window(reset=math.ceil(now + self._config.window_s))
            self._windows[credential] = window
        return window

    def headers(self, credential: str | None, now: float) -> dict[str, str]:
        window = self._window(credential, now)
        limit = self._config.limit
        return {
            "x-ratelimit-limit": str(limit),
            "x-ratelimit-remaining": str(max(0, limit - window.used)),
            "x-ratelimit-used": str(window.used),
            "x-ratelimit-reset": str(window.reset),
            "x-ratelimit-resource": "core",
        }

    def exhausted(self, credential: str | None, now: float) -> bool:
        return self._enforced and self._window(credential, now).used >= self._config.limit

    def count(self, credential: str | None, now: float) -> None:
        self._window(credential, now).used += 1

    def refuse_primary(self, credential: str | None, now: float) -> Block:
        """Block `credential` until its window resets; the caller answers with the returned block."""
        block = Block(self._config.status, now, float(self._window(credential, now).reset), "primary")
        self._blocks[credential] = block
        return block

    def refuse_secondary(self, credential: str | None, now: float, *, status: int, until: float,
                         advertise: bool) -> Block:
        block = Block(status, now, until, "storm", advertise)
        self._blocks[credential] = block
        return block

    def blocked(self, credential: str | None, arrival: float) -> Block | None:
        """The block `credential` was under when its request arrived, if any."""
        block = self._blocks.get(credential)
        if block is None:
            return None
        if arrival >= block.until:
            del self._blocks[credential]
            return None
        return block
