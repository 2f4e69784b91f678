"""Odoo's exceptions as the emulator raises and serialises them (../shared/api-contracts/odoo.md section 8)."""

from __future__ import annotations

from typing import Any

_TRACEBACK = 'Traceback (most recent call last):\n  File "/usr/lib/python3/dist-packages/odoo/http.py", line 1783,' \
             ' in _serve_db\n    return service_model.retrying(self._serve_ir_http, self.env)\n'
NOT_FOUND = ("404 Not Found: The requested URL was not found on the server. If you entered the URL manually "
             "please check your spelling and try again.")


class OdooError(Exception):
    """An exception as Odoo serialises it: `name` is the Python class path (odoo.md section 8)."""

    def __init__(self, name: str, message: str, *, status: int = 422, code: int = 200,
                 title: str = "Odoo Server Error") -> None:
        super().__init__(message)
        self.name, self.message, self.status, self.code, self.title = name, message, status, code, title

    def data(self) -> dict[str, Any]:
        return {"name": self.name, "message": self.message, "arguments": [self.message], "context": {},
                "debug": f"{_TRACEBACK}{self.name}: {self.message}\n"}


def access_denied() -> OdooError:
    return OdooError("odoo.exceptions.AccessDenied", "Access Denied", status=401)


def session_expired() -> OdooError:
    # odoo.md section 2 and 8: code 100 "Odoo Session Expired" on the session routes.
    return OdooError("odoo.http.SessionExpiredException", "Session expired", status=401, code=100,
                     title="Odoo Session Expired")


def value_error(message: str) -> OdooError:
    return OdooError("builtins.ValueError", message)


def type_error(message: str) -> OdooError:
    return OdooError("builtins.TypeError", message)
