"""The engine's error tree. Every message says what went wrong and what the user can do next.

    IpaiError                      base; the CLI prints its message, never a traceback
    ├── SpecError                  a spec file is invalid (each issue has file, line, column, path)
    ├── ConfigError                settings or environment are wrong (database URL, lakehouse URI ...)
    ├── DatabaseUnreachable        the control-plane or destination database cannot be reached
    ├── RunConflict                an instance already has an active run
    ├── LeaseLost                  a run was closed by someone else after its heartbeat lapsed
    ├── TransientError             a read may succeed if tried again (Ray retries the task)
    ├── NotFound                   an instance or run that does not exist
    └── RunFailed                  a run ended in failure; the message names stream and partition
        └── RunCancelled           a run was interrupted (Ctrl-C); committed partitions stay committed
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


class NotFound(IpaiError):
    pass


class RunFailed(IpaiError):
    def __init__(self, message: str, *, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class RunCancelled(RunFailed):
    pass
