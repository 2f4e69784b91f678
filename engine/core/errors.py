"""The engine's error tree. Every message says what went wrong and what the user can do next.

    IpaiError                      base; the CLI prints its message, never a traceback
    ├── SpecError                  a spec file is invalid (each issue has file, line, column, path)
    ├── ConfigError                settings or environment are wrong (database URL, lakehouse URI ...)
    ├── DatabaseUnreachable        the control-plane or destination database cannot be reached
    ├── RunConflict                an instance already has an active run
    ├── LeaseLost                  a run was closed by someone else after its heartbeat lapsed
    ├── TransientError             a read may succeed if tried again (Ray retries the task)
    ├── SourceDeferred             a source quota is spent until a later time; the run parks as `deferred`
    ├── NotFound                   an instance or run that does not exist
    └── RunFailed                  a run ended in failure; the message names stream and partition
        ├── RunCancelled           a run was interrupted (Ctrl-C); committed partitions stay committed
        └── RunDeferred            a run parked until a source quota resets; the next run resumes it
"""

from __future__ import annotations

from typing import Any


class IpaiError(Exception):
    """Base of every error the engine reports to a user."""


class SpecError(IpaiError):
    def __init__(self, message: str, *, issues: list[Any]) -> None:
        super().__init__(message)
        self.issues = issues


class ConfigError(IpaiError):
    pass


class DatabaseUnreachable(IpaiError):
    pass


class RunConflict(IpaiError):
    def __init__(self, message: str, *, active_run_id: str) -> None:
        super().__init__(message)
        self.active_run_id = active_run_id


class LeaseLost(IpaiError):
    pass


class TransientError(IpaiError):
    """Raised by a reader for a failure worth retrying (timeouts, 5xx): Ray re-runs the read task."""


class SourceDeferred(IpaiError):
    """Raised by a reader when the source's quota is spent until `until` (epoch seconds)."""

    def __init__(self, message: str, *, until: float) -> None:
        super().__init__(message)
        self.until = until

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), str(self), {"until": self.until}))


def _rebuild(cls: type[Exception], message: str, fields: dict[str, object]) -> Exception:
    """Rebuild an error with keyword fields after it crossed a process boundary (Ray pickles errors)."""
    return cls(message, **fields)


class NotFound(IpaiError):
    pass


class RunFailed(IpaiError):
    def __init__(self, message: str, *, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class RunCancelled(RunFailed):
    pass


class RunDeferred(RunFailed):
    def __init__(self, message: str, *, run_id: str, until: float) -> None:
        super().__init__(message, run_id=run_id)
        self.until = until
