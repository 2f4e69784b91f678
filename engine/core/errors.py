"""The engine's error tree. Every message says what went wrong and what the user can do next.

Every error the product raises for a user is an `IpaiError`. Those defined beside the code that raises
them are drawn here too, with their module in brackets.

    IpaiError                  base; the CLI prints its message, never a traceback
    ├── SpecError              a spec file is invalid (each issue has file, line, column, path)
    ├── ConfigError            settings or environment are wrong (database URL, lakehouse URI ...)
    │   └── EgressRefused      a URL, database host or SQLite file the egress policy does not allow
    │                          [engine/core/egress.py]
    ├── DatabaseUnreachable    the control-plane or destination database cannot be reached
    ├── RunConflict            an instance already has an active run
    ├── LeaseLost              a run was closed by someone else after its heartbeat lapsed
    ├── TransientError         a read may succeed if tried again (Ray retries the task)
    │   └── HttpRetryable      5xx, timeouts, resets: retried with backoff in the task [connectors/httpkit/errors.py]
    │       ├── RateLimited    429, an exhausted rate limit: wait for Retry-After or the reset [same]
    │       └── AuthExpired    401: the access token is refreshed once, then the request fails [same]
    ├── SourceDeferred         a source quota is spent until a later time; the run parks as `deferred`
    │   └── QuotaDeferred      an API quota that resets much later is spent [connectors/httpkit/errors.py]
    ├── HttpFailed             a response retrying will not fix, with the API's words; a refused request
    │   │                      [connectors/httpkit/errors.py]
    │   └── SessionExpired     Odoo's web session expired; it logs in again once [connectors/odoo/rpc.py]
    ├── BronzeWriteError       a bronze write (Delta or Postgres) failed [layers/bronze/writer.py]
    ├── SilverMergeError       a silver merge failed; the cause as text [engine/run/raytime.py]
    ├── ViewFailed             one gold view could not be loaded or applied [layers/gold/definitions.py]
    ├── NotFound               an instance or run that does not exist
    └── RunFailed              a run ended in failure; the message names stream and partition
        ├── RunCancelled       a run was interrupted (Ctrl-C); committed partitions stay committed
        └── RunDeferred        a run parked until a source quota resets; the next run resumes it

`ipai` exits 2 for a SpecError, 75 for a RunDeferred and 1 for any other IpaiError. Errors cross Ray
boundaries pickled: one with keyword fields defines `__reduce__` to rebuild through `_rebuild`; one with a
message alone pickles as any exception does. Ray retries a read task for a TransientError only; a bronze
write, a silver merge and every other error fail at once. `DriverCrash` (engine/core/faults.py) stays
outside the tree on purpose: a BaseException that stands for the driver process dying.
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
